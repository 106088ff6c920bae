//! Judging a measurement: `successCondition` / `failureCondition` are CEL expressions over `result`.
//!
//! # The shape of `result`
//!
//! Every provider hands over a JSON value, which becomes the CEL variable `result`:
//!
//! - **Prometheus**: a scalar, or a vector with one sample, is a number (`result < 0.05`); a vector
//!   with several samples is a list of numbers in the order Prometheus returned them
//!   (`result[0] < 0.05`, `result.all(x, x < 0.05)`). Samples that are NaN or infinite are left out.
//! - **Web**: the JSON value at `jsonPath` (the whole body without one); several matches are a list.
//! - **Datadog**: the latest non-null point of the query's single series, a number.
//!
//! A number and a list holding just that number are interchangeable: when a condition fails to
//! evaluate on one shape, the other is tried, so `result[0] < 0.05` works on a single sample and
//! `result < 0.05` on a one-element list. Integers and doubles compare with each other (`result < 1`).
//!
//! An empty result (`null`, no samples, no JSONPath match, an empty list) is never judged: the
//! measurement is `Inconclusive`.

use serde_json::Value as Json;
use storm_shared::types::analysis::Metric;
use storm_shared::types::stormservice::AnalysisPhase;

/// A condition could not be evaluated. The message names the condition and says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    /// The expression does not parse (admission normally refuses these).
    #[error("{field} {expr:?} is not valid CEL: {reason}")]
    Compile {
        /// `successCondition` or `failureCondition`.
        field: &'static str,
        /// The expression.
        expr: String,
        /// The parser's first line.
        reason: String,
    },
    /// Evaluating the expression failed, for example comparing a list with a number.
    #[error("{field} {expr:?} could not be evaluated on result {result}: {reason}{hint}")]
    Evaluate {
        /// `successCondition` or `failureCondition`.
        field: &'static str,
        /// The expression.
        expr: String,
        /// The value of `result` as [`shown`]: numbers and booleans, else only its shape.
        result: String,
        /// The interpreter's error, without the values it names.
        reason: String,
        /// How to fix it, when a likely fix is known.
        hint: String,
    },
    /// The expression evaluated to something other than a boolean.
    #[error("{field} {expr:?} must evaluate to true or false, but gave {value}")]
    NotBoolean {
        /// `successCondition` or `failureCondition`.
        field: &'static str,
        /// The expression.
        expr: String,
        /// What it gave: a number or boolean, else its type.
        value: String,
    },
}

/// Whether a result holds nothing to judge: null, or an empty list.
pub fn is_empty(result: &Json) -> bool {
    match result {
        Json::Null => true,
        Json::Array(items) => items.is_empty(),
        _ => false,
    }
}

/// The phase of one measurement with `result`: `Successful`, `Failed` or `Inconclusive`.
///
/// A true failureCondition fails; a true successCondition succeeds; a false successCondition fails,
/// or is inconclusive when a failureCondition is also given (neither condition held). Without a
/// successCondition, a value that does not meet the failureCondition succeeds.
pub fn judge(metric: &Metric, result: &Json) -> Result<AnalysisPhase, ConditionError> {
    if is_empty(result) {
        return Ok(AnalysisPhase::Inconclusive);
    }
    if let Some(expr) = &metric.failure_condition
        && evaluate("failureCondition", expr, result)?
    {
        return Ok(AnalysisPhase::Failed);
    }
    match &metric.success_condition {
        Some(expr) if evaluate("successCondition", expr, result)? => Ok(AnalysisPhase::Successful),
        Some(_) if metric.failure_condition.is_some() => Ok(AnalysisPhase::Inconclusive),
        Some(_) => Ok(AnalysisPhase::Failed),
        None => Ok(AnalysisPhase::Successful),
    }
}

/// Evaluates one boolean condition over `result`, trying the other shape of a single number
/// (see the module documentation) when the first does not evaluate.
pub fn evaluate(field: &'static str, expr: &str, result: &Json) -> Result<bool, ConditionError> {
    // Admission refuses these; a template stored before that rule is refused here, before the
    // parser recurses into it.
    let depth = storm_shared::rules::metric_limits::expression_depth(expr);
    if expr.len() > storm_shared::rules::MAX_CONDITION_LEN
        || depth > storm_shared::rules::MAX_EXPRESSION_DEPTH
    {
        return Err(ConditionError::Compile {
            field,
            expr: truncate(expr, 100),
            reason: format!(
                "longer than {} bytes or nested deeper than {}: simplify it",
                storm_shared::rules::MAX_CONDITION_LEN,
                storm_shared::rules::MAX_EXPRESSION_DEPTH
            ),
        });
    }
    let program = cel::Program::compile(expr).map_err(|e| ConditionError::Compile {
        field,
        expr: expr.to_string(),
        reason: e
            .to_string()
            .lines()
            .next()
            .unwrap_or("syntax error")
            .to_string(),
    })?;
    let first = run(&program, result);
    let outcome = match (first, other_shape(result)) {
        (Err(e), Some(alt)) => run(&program, &alt).map_err(|_| e),
        (first, _) => first,
    };
    match outcome {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(ConditionError::NotBoolean {
            field,
            expr: expr.to_string(),
            value: describe(&other),
        }),
        Err(reason) => Err(ConditionError::Evaluate {
            field,
            expr: expr.to_string(),
            result: shown(result),
            hint: hint(result),
            reason,
        }),
    }
}

fn run(program: &cel::Program, result: &Json) -> Result<cel::Value, String> {
    let mut context = cel::Context::default();
    context.add_variable_from_value("result", to_cel(result));
    program.execute(&context).map_err(|e| error_kind(&e))
}

/// The kind of an interpreter error, without its arguments: they may quote values of `result`
/// (`UnsupportedBinaryOperator("less", String("..."), Int(1))`), which stay out of status.
fn error_kind(e: &cel::ExecutionError) -> String {
    let debug = format!("{e:?}");
    let name = debug.split(['(', ' ', '{']).next().unwrap_or("error");
    // CamelCase to words: "UnsupportedBinaryOperator" -> "unsupported binary operator".
    let mut words = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    words
}

/// JSON as a CEL value. Integers become CEL `int` (as CEL literals are), so `result + 1` works on a
/// JSON `1`; only integers beyond `int` become `uint`.
pub fn to_cel(value: &Json) -> cel::Value {
    match value {
        Json::Null => cel::Value::Null,
        Json::Bool(b) => cel::Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => cel::Value::from(s.as_str()),
        Json::Array(items) => {
            cel::Value::List(std::sync::Arc::new(items.iter().map(to_cel).collect()))
        }
        Json::Object(map) => cel::Value::from(
            map.iter()
                .map(|(k, v)| (k.clone(), to_cel(v)))
                .collect::<std::collections::HashMap<String, cel::Value>>(),
        ),
    }
}

/// A single number as a one-element list, or a one-element list as its element.
fn other_shape(result: &Json) -> Option<Json> {
    match result {
        Json::Number(_) => Some(Json::Array(vec![result.clone()])),
        Json::Array(items) if items.len() == 1 => items.first().cloned(),
        _ => None,
    }
}

fn hint(result: &Json) -> String {
    match result {
        Json::Array(items) => format!(
            " (result is a list of {} values here: index it, e.g. result[0] < 0.05, or use result.all(x, x < 0.05))",
            items.len()
        ),
        Json::String(_) => {
            " (result is a string here: compare with a string, or convert, e.g. double(result) < 0.05)"
                .to_string()
        }
        Json::Object(_) => {
            " (result is an object here: select a field, e.g. result.errorRate, or set jsonPath)"
                .to_string()
        }
        _ => String::new(),
    }
}

/// A value as status and Events may show it: numbers, booleans and lists of them as JSON text (cut
/// to a length fit for a status message); anything else by its shape only. A metric can point at
/// a server the tenant cannot read directly; what that server answers must not come back through
/// the StormService's status, so text never does.
pub fn shown(result: &Json) -> String {
    let scalar = |v: &Json| matches!(v, Json::Null | Json::Bool(_) | Json::Number(_));
    match result {
        Json::Array(items) if items.iter().all(scalar) => truncate(&result.to_string(), 200),
        Json::Array(items) => format!("a list of {} values (not shown)", items.len()),
        Json::String(s) => format!("a string of {} bytes (not shown)", s.len()),
        Json::Object(map) => format!("an object with {} keys (not shown)", map.len()),
        other => truncate(&other.to_string(), 200),
    }
}

/// `text` cut to at most `max` bytes at a character boundary, with `...` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// A CEL value in a message: numbers as they are, anything else by its type.
fn describe(value: &cel::Value) -> String {
    match value {
        cel::Value::Int(i) => i.to_string(),
        cel::Value::UInt(u) => u.to_string(),
        cel::Value::Float(f) => f.to_string(),
        cel::Value::Null => "null".to_string(),
        cel::Value::String(s) => format!("a string of {} bytes (not shown)", s.len()),
        cel::Value::List(l) => format!("a list of {} values (not shown)", l.len()),
        cel::Value::Map(_) => "a map (not shown)".to_string(),
        _ => "a value that is not a boolean".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metric(success: Option<&str>, failure: Option<&str>) -> Metric {
        Metric {
            name: "m".into(),
            success_condition: success.map(str::to_string),
            failure_condition: failure.map(str::to_string),
            ..Metric::default()
        }
    }

    use AnalysisPhase::{Failed, Inconclusive, Successful};

    #[test]
    fn numbers_are_judged_by_the_success_condition() {
        let m = metric(Some("result < 0.05"), None);
        assert_eq!(judge(&m, &json!(0.01)), Ok(Successful));
        assert_eq!(judge(&m, &json!(0.2)), Ok(Failed));
        // Integers from a web body compare with doubles.
        assert_eq!(judge(&m, &json!(0)), Ok(Successful));
        assert_eq!(
            judge(&metric(Some("result == 1"), None), &json!(1.0)),
            Ok(Successful)
        );
    }

    #[test]
    fn failure_condition_wins_and_neither_holding_is_inconclusive() {
        let both = metric(Some("result < 0.01"), Some("result > 0.05"));
        assert_eq!(judge(&both, &json!(0.001)), Ok(Successful));
        assert_eq!(judge(&both, &json!(0.1)), Ok(Failed));
        assert_eq!(judge(&both, &json!(0.03)), Ok(Inconclusive));
        let failure_only = metric(None, Some("result > 0.05"));
        assert_eq!(judge(&failure_only, &json!(0.01)), Ok(Successful));
        assert_eq!(judge(&failure_only, &json!(0.5)), Ok(Failed));
        assert_eq!(judge(&metric(None, None), &json!(7)), Ok(Successful));
    }

    #[test]
    fn lists_index_and_use_macros() {
        let m = metric(Some("result[0] < 0.05"), None);
        assert_eq!(judge(&m, &json!([0.01, 0.9])), Ok(Successful));
        let all = metric(Some("result.all(x, x < 0.05)"), None);
        assert_eq!(judge(&all, &json!([0.01, 0.9])), Ok(Failed));
        assert_eq!(judge(&all, &json!([0.01, 0.02])), Ok(Successful));
    }

    #[test]
    fn a_number_and_a_one_element_list_are_interchangeable() {
        let indexed = metric(Some("result[0] < 0.05"), None);
        assert_eq!(judge(&indexed, &json!(0.01)), Ok(Successful));
        assert_eq!(judge(&indexed, &json!(0.5)), Ok(Failed));
        let plain = metric(Some("result < 0.05"), None);
        assert_eq!(judge(&plain, &json!([0.01])), Ok(Successful));
    }

    #[test]
    fn empty_results_are_inconclusive_never_successful() {
        for m in [
            metric(Some("result < 0.05"), None),
            metric(None, Some("result > 0.05")),
            metric(None, None),
        ] {
            assert_eq!(judge(&m, &json!(null)), Ok(Inconclusive));
            assert_eq!(judge(&m, &json!([])), Ok(Inconclusive));
        }
    }

    #[test]
    fn type_mismatches_are_errors_with_a_hint() {
        let m = metric(Some("result < 0.05"), None);
        let err = judge(&m, &json!([0.01, 0.02])).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ConditionError::Evaluate { .. }), "{err:?}");
        assert!(text.contains("successCondition"), "{text}");
        assert!(text.contains("result[0]"), "{text}");
        let err = judge(&m, &json!("0.01")).unwrap_err().to_string();
        assert!(err.contains("double(result)"), "{err}");
        assert_eq!(
            judge(&metric(Some("double(result) < 0.05"), None), &json!("0.01")),
            Ok(Successful)
        );
    }

    #[test]
    fn objects_are_reachable_by_field() {
        let m = metric(Some("result.ok && result.rate < 0.1"), None);
        assert_eq!(
            judge(&m, &json!({"ok": true, "rate": 0.01})),
            Ok(Successful)
        );
    }

    #[test]
    fn non_boolean_and_invalid_expressions_are_errors() {
        assert_eq!(
            judge(&metric(Some("result + 1 == 2"), None), &json!(1)),
            Ok(Successful)
        );
        let err = judge(&metric(Some("result + 1"), None), &json!(1)).unwrap_err();
        assert!(matches!(err, ConditionError::NotBoolean { .. }), "{err:?}");
        let err = judge(&metric(Some("result <"), None), &json!(1)).unwrap_err();
        assert!(matches!(err, ConditionError::Compile { .. }), "{err:?}");
    }

    #[test]
    fn messages_show_numbers_and_booleans_never_text() {
        assert_eq!(shown(&json!(0.5)), "0.5");
        assert_eq!(shown(&json!([1, true, null])), "[1,true,null]");
        assert_eq!(shown(&json!("s3cret")), "a string of 6 bytes (not shown)");
        assert_eq!(
            shown(&json!({"k": "s3cret"})),
            "an object with 1 keys (not shown)"
        );
        assert_eq!(shown(&json!(["s3cret"])), "a list of 1 values (not shown)");
        // Interpreter errors quote their operands; conditions returning text show its type.
        for (expr, result) in [
            ("result < 1", json!("s3cret")),
            ("result.k < 1", json!({"k": "s3cret"})),
            ("result.k", json!({"k": "s3cret"})),
            ("result.k + 1 == 2", json!({"k": "s3cret"})),
        ] {
            let err = judge(&metric(Some(expr), None), &result).unwrap_err();
            assert!(!err.to_string().contains("s3cret"), "{expr}: {err}");
        }
    }

    #[test]
    fn conditions_over_the_caps_are_refused_before_parsing() {
        let deep = format!("{}result{} < 1", "(".repeat(40), ")".repeat(40));
        let err = judge(&metric(Some(&deep), None), &json!(0)).unwrap_err();
        assert!(err.to_string().contains("nested deeper than 32"), "{err}");
        let long = format!("result < 1{}", " || result < 1".repeat(200));
        let err = judge(&metric(Some(&long), None), &json!(0)).unwrap_err();
        assert!(err.to_string().contains("longer than 2048"), "{err}");
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é...");
    }
}
