//! Property tests (proptest) over everything that decodes what a producer or Redis wrote:
//! job payloads from arbitrary bytes, arbitrary zlib streams and arbitrary JSON never panic;
//! result fields and payloads round-trip; Python-style JSON parses back equal; `repr` never
//! panics. A panic here would be a worker crash on bad input.

use proptest::prelude::*;
use rq_supervisor::protocol::{payload, pyrepr, result};
use serde_json::{Map, Value};

fn zlib(data: &[u8]) -> Vec<u8> {
    payload::deflate(data)
}

/// Any JSON value (finite numbers only: JSON has no others), nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
        "[\\x00-\\x1f\"\\\\\u{7f}-\u{10ffff}]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = payload::decode(&data);
    }

    #[test]
    fn decode_never_panics_on_arbitrary_zlib_bytes(data in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = payload::decode(&zlib(&data));
    }

    #[test]
    fn decode_never_panics_on_arbitrary_json(v in json_value()) {
        let text = payload::python_json(&v);
        let _ = payload::decode(&text);
        let _ = payload::decode(&zlib(&text));
    }

    #[test]
    fn decode_never_panics_on_json_like_text(text in "[\\[\\]{}\",:0-9a-zA-Z.eE+\\- \\\\nNIaf]{0,200}") {
        let _ = payload::decode(text.as_bytes());
        let _ = payload::decode(&zlib(text.as_bytes()));
    }

    #[test]
    fn decode_never_panics_on_truncated_or_corrupted_zlib(
        v in json_value(),
        cut in any::<prop::sample::Index>(),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let z = zlib(&payload::python_json(&Value::Array(vec![
            Value::String("f".into()), Value::Null, Value::Array(vec![v]), Value::Object(Map::new()),
        ])));
        let _ = payload::decode(&z[..cut.index(z.len() + 1)]);
        let mut bad = z.clone();
        let i = flip.index(bad.len());
        bad[i] ^= 1 << bit;
        let _ = payload::decode(&bad);
    }

    #[test]
    fn payloads_round_trip(
        func in "[a-zA-Z_][a-zA-Z0-9_.]{0,30}",
        args in prop::collection::vec(json_value(), 0..5),
        kwargs in prop::collection::vec(("[a-z_]{1,10}", json_value()), 0..5),
    ) {
        let call = payload::Call {
            func_name: func,
            args,
            kwargs: kwargs.into_iter().collect(),
        };
        let decoded = payload::decode(&payload::encode(&call)).expect("our own payload decodes");
        prop_assert_eq!(decoded, call);
    }

    #[test]
    fn python_json_parses_back_equal(v in json_value()) {
        let text = payload::python_json(&v);
        prop_assert!(text.is_ascii(), "ensure_ascii, as Python writes it");
        let back: Value = serde_json::from_slice(&text).expect("valid JSON");
        prop_assert_eq!(back, v);
    }

    #[test]
    fn return_values_round_trip(v in json_value()) {
        let field = result::encode_return_value(&v);
        prop_assert_eq!(result::decode_return_value(field.as_bytes()), Some(v));
    }

    #[test]
    fn exc_strings_round_trip(text in any::<String>()) {
        let field = result::encode_exc_string(&text);
        prop_assert_eq!(result::decode_exc_string(field.as_bytes()), Some(text));
    }

    #[test]
    fn result_decoders_never_panic_on_arbitrary_fields(data in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = result::decode_return_value(&data);
        let _ = result::decode_exc_string(&data);
    }

    #[test]
    fn repr_never_panics(
        v in json_value(),
        f in any::<f64>(),
        s in any::<String>(),
        func in any::<String>(),
        args in prop::collection::vec(json_value(), 0..4),
    ) {
        let r = pyrepr::repr(&v);
        prop_assert!(!r.is_empty());
        let _ = pyrepr::float_repr(f);
        let quoted = pyrepr::str_repr(&s);
        prop_assert!(quoted.starts_with('\'') || quoted.starts_with('"'));
        let _ = pyrepr::call_string(&func, &args, &Map::new());
    }
}
