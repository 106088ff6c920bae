//! Any bytes sent to /mutate or /validate get an answer: 200 with a review echoing a uid, or 400
//! with a Status. Never a panic, never a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use storm_webhook::lookups::Caches;
use storm_webhook::review::{Endpoint, Settings, handle};

fn caches() -> &'static Arc<Caches> {
    static CACHES: OnceLock<Arc<Caches>> = OnceLock::new();
    CACHES.get_or_init(Caches::offline)
}

fuzz_target!(|data: &[u8]| {
    for endpoint in [Endpoint::Mutate, Endpoint::Validate] {
        let answer = handle(endpoint, data, caches().as_ref(), &Settings::default());
        assert!(answer.http_status == 200 || answer.http_status == 400);
        let body: serde_json::Value =
            serde_json::from_slice(&answer.body).expect("answers are JSON");
        if answer.http_status == 200 {
            assert_eq!(body["kind"], "AdmissionReview");
            assert!(body["response"]["allowed"].is_boolean());
        }
    }
});
