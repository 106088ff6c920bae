//! Analysis: AnalysisTemplate metrics measured through providers and judged by CEL conditions.
