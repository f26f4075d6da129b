//! Property tests (proptest) over config parsing: `Config::parse` on arbitrary text, on
//! TOML-looking text, and on randomly mutated copies of the shipped example file never
//! panics; it either validates or returns an error that names the file.

use std::path::Path;

use proptest::prelude::*;
use rq_supervisor::config::Config;

const EXAMPLE: &str = include_str!("../../../supervisor.toml.example");

fn parse(text: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pool.toml");
    if let Err(e) = Config::parse(&path, text) {
        let msg = e.to_string();
        assert!(msg.contains("pool.toml"), "the error names the file: {msg}");
    }
}

/// One edit of the example: delete a span, insert text, or replace a span.
#[derive(Debug, Clone)]
enum Edit {
    Delete(prop::sample::Index, usize),
    Insert(prop::sample::Index, String),
    Replace(prop::sample::Index, usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    let snippet = prop_oneof![
        any::<String>(),
        "[\\[\\]{}=\",.#\\n a-z0-9_\\-]{0,12}",
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("\"\"".to_string()),
        Just("[]".to_string()),
        Just("1e400".to_string()),
        Just("\"999999999999999999999s\"".to_string()),
        Just("nan".to_string()),
        Just("[pools.x]\n".to_string()),
        Just("user = \"root\"\n".to_string()),
    ];
    prop_oneof![
        (any::<prop::sample::Index>(), 0usize..40).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<prop::sample::Index>(), snippet.clone()).prop_map(|(i, s)| Edit::Insert(i, s)),
        (any::<prop::sample::Index>(), 0usize..20, snippet)
            .prop_map(|(i, n, s)| Edit::Replace(i, n, s)),
    ]
}

/// Applies edits at char boundaries.
fn apply(text: &str, edits: &[Edit]) -> String {
    let mut t: Vec<char> = text.chars().collect();
    for e in edits {
        match e {
            Edit::Delete(i, n) => {
                let at = i.index(t.len() + 1);
                let end = (at + n).min(t.len());
                t.drain(at..end);
            }
            Edit::Insert(i, s) => {
                let at = i.index(t.len() + 1);
                t.splice(at..at, s.chars());
            }
            Edit::Replace(i, n, s) => {
                let at = i.index(t.len() + 1);
                let end = (at + n).min(t.len());
                t.splice(at..end, s.chars());
            }
        }
    }
    t.into_iter().collect()
}

#[test]
fn the_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("supervisor.toml.example");
    Config::parse(&path, EXAMPLE).expect("the shipped example validates");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        parse(&text);
    }

    #[test]
    fn toml_like_text_never_panics(text in "(\\[{1,2}[a-z._\"]{0,12}\\]{1,2}\\n|[a-z_]{1,12} = (\"[^\"\\n]{0,12}\"|-?[0-9]{1,22}|true|\\[\\]|\\{\\}|[0-9.e+-]{1,8})\\n){0,12}") {
        parse(&text);
    }

    /// Every duration key with any number or duration text: refused or accepted, never a
    /// panic (a huge float once panicked converting to a Duration), and what is accepted
    /// leaves the shutdown budget computable.
    #[test]
    fn any_value_of_a_duration_key_never_panics(
        key in prop::sample::select(vec![
            "[supervisor] warm_timeout", "[supervisor] cold_timeout", "[supervisor] spawn_stagger",
            "[supervisor] health_interval", "[worker] worker_ttl", "[worker] job_monitoring_interval",
            "[worker] maintenance_interval", "[worker] max_idle_time", "[worker] results_ttl",
        ]),
        value in prop_oneof![
            any::<f64>().prop_map(|f| format!("{f:e}")),
            any::<i64>().prop_map(|i| i.to_string()),
            any::<u64>().prop_map(|i| format!("\"{i}s\"")),
            any::<u64>().prop_map(|i| format!("\"{i}h\"")),
            "\"[0-9]{1,30}(ns|ms|s|m|h|d|w|y)\"",
        ],
    ) {
        let (table, name) = key.split_once(' ').unwrap();
        let text = format!("{table}\n{name} = {value}\n");
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pool.toml");
        if let Ok(cfg) = Config::parse(&path, &text) {
            let _ = cfg.shutdown_budget();
        }
    }

    #[test]
    fn mutated_example_files_never_panic(edits in prop::collection::vec(edit(), 1..6)) {
        parse(&apply(EXAMPLE, &edits));
    }
}
