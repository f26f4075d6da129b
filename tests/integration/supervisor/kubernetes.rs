//! docs/supervisor.md's Kubernetes section, parsed (no cluster runs here): every ```yaml
//! block must be valid YAML, and the fields that decide whether the manifests work must agree
//! with each other, with the pool file they carry (checked by the real `rq-supervisor check`)
//! and with the metric names the supervisor serves.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::supervisor::PoolFile;
use crate::support::*;
use yaml_rust2::{Yaml, YamlLoader};

const DOC: &str = include_str!("../../../docs/supervisor.md");
const METRICS_SRC: &str = include_str!("../../../src/supervisor/metrics.rs");

/// The ```yaml blocks of the `## Kubernetes` section, parsed, by `kind`.
fn manifests() -> HashMap<String, Yaml> {
    let start = DOC.find("\n## Kubernetes\n").expect("a Kubernetes section");
    let rest = &DOC[start + 1..];
    let section = &rest[..rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3)];
    let mut out = HashMap::new();
    for block in section.split("```yaml\n").skip(1) {
        let text = &block[..block.find("\n```").expect("a closed yaml block")];
        let docs =
            YamlLoader::load_from_str(text).unwrap_or_else(|e| panic!("invalid YAML: {e}\n{text}"));
        for doc in docs {
            let kind = doc["kind"].as_str().expect("every manifest has a kind");
            assert!(
                out.insert(kind.to_string(), doc.clone()).is_none(),
                "two {kind}s"
            );
        }
    }
    out
}

fn text<'a>(y: &'a Yaml, what: &str) -> &'a str {
    y.as_str()
        .unwrap_or_else(|| panic!("{what} must be a string, is {y:?}"))
}

/// `matchLabels` or `labels` as pairs.
fn labels(y: &Yaml) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = y
        .as_hash()
        .expect("labels")
        .iter()
        .map(|(k, v)| (text(k, "label").to_string(), text(v, "label").to_string()))
        .collect();
    v.sort();
    v
}

fn secs(v: &toml::Value) -> Duration {
    humantime::parse_duration(v.as_str().expect("a duration")).expect("a duration")
}

#[test]
fn the_kubernetes_manifests_parse_and_agree_with_each_other_and_the_pool_file() {
    let m = manifests();
    let mut kinds: Vec<&str> = m.keys().map(String::as_str).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "ScaledObject",
            "Secret"
        ]
    );
    for (kind, api) in [
        ("ConfigMap", "v1"),
        ("Secret", "v1"),
        ("Deployment", "apps/v1"),
        ("PodDisruptionBudget", "policy/v1"),
        ("ScaledObject", "keda.sh/v1alpha1"),
    ] {
        assert_eq!(m[kind]["apiVersion"].as_str(), Some(api), "{kind}");
    }
    let (config_map, secret, deploy) = (&m["ConfigMap"], &m["Secret"], &m["Deployment"]);

    // The pool file: accepted by the real binary, whose budget is the grace period.
    let pool_text = text(&config_map["data"]["pool.toml"], "pool.toml");
    let pool: toml::Table = pool_text.parse().expect("pool.toml is TOML");
    let sup = &pool["supervisor"];
    let budget = secs(&sup["warm_timeout"]) + secs(&sup["cold_timeout"]) + Duration::from_secs(5);
    let file = PoolFile::new(pool_text);
    let checked = stdout_of_success("rq-supervisor check", &Supervisor::check(&file).output());
    assert!(
        checked.contains(&format!(
            "terminationGracePeriodSeconds: {}",
            budget.as_secs()
        )),
        "{checked}"
    );

    // The Deployment: its selector picks its own pods; the grace period covers the budget.
    let spec = &deploy["spec"];
    let pod_labels = labels(&spec["template"]["metadata"]["labels"]);
    let selector = labels(&spec["selector"]["matchLabels"]);
    assert!(!selector.is_empty());
    assert!(
        selector.iter().all(|l| pod_labels.contains(l)),
        "{selector:?}"
    );
    let pod = &spec["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"]
        .as_i64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace as u64 >= budget.as_secs(),
        "grace {grace} s < budget {budget:?}"
    );
    let containers = pod["containers"].as_vec().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let command: Vec<&str> = c["command"]
        .as_vec()
        .expect("command")
        .iter()
        .map(|a| text(a, "argument"))
        .collect();
    assert_eq!(command[0], "rq-supervisor");
    let pool_path = command[command.iter().position(|a| *a == "-c").expect("-c") + 1];
    // The pool file comes from the ConfigMap's volume.
    let mount = c["volumeMounts"]
        .as_vec()
        .expect("volumeMounts")
        .iter()
        .find(|v| pool_path.starts_with(text(&v["mountPath"], "mountPath")))
        .expect("the pool file is on a mounted volume");
    let volume = pod["volumes"]
        .as_vec()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mount's volume");
    assert_eq!(volume["configMap"]["name"], config_map["metadata"]["name"]);
    assert!(pool_path.ends_with("/pool.toml"));
    // Every variable from the Secret names one of its keys; the URL comes only that way.
    let mut env = HashMap::new();
    for e in c["env"].as_vec().expect("env") {
        let name = text(&e["name"], "env name").to_string();
        let from = &e["valueFrom"]["secretKeyRef"];
        assert_eq!(from["name"], secret["metadata"]["name"], "{name}");
        let key = text(&from["key"], "secret key");
        assert!(
            !secret["stringData"][key].is_badvalue(),
            "{name}: no key {key}"
        );
        env.insert(name, key.to_string());
    }
    assert!(env.contains_key("RQ_REDIS_URL"));
    assert!(!pool_text.contains("redis://"), "no URL in the ConfigMap");
    // Probes on /healthz, at the port the pool file serves metrics on.
    let metrics_port = sup["metrics"]
        .as_str()
        .expect("the pool file serves metrics")
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<i64>()
        .unwrap();
    let ports = c["ports"].as_vec().expect("ports");
    assert_eq!(ports[0]["containerPort"].as_i64(), Some(metrics_port));
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some("/healthz"), "{probe}");
        assert!(
            get["port"] == ports[0]["name"] || get["port"].as_i64() == Some(metrics_port),
            "{probe}"
        );
    }

    // The PodDisruptionBudget covers the same pods.
    let pdb = &m["PodDisruptionBudget"]["spec"];
    assert_eq!(labels(&pdb["selector"]["matchLabels"]), selector);
    assert!(!pdb["maxUnavailable"].is_badvalue() || !pdb["minAvailable"].is_badvalue());

    // The ScaledObject scales this Deployment on RQ's queue lists or our metric.
    let so = &m["ScaledObject"]["spec"];
    assert_eq!(so["scaleTargetRef"]["name"], deploy["metadata"]["name"]);
    assert!(so["minReplicaCount"].as_i64() <= so["maxReplicaCount"].as_i64());
    let queues: Vec<&str> = pool["pools"]
        .as_table()
        .unwrap()
        .values()
        .flat_map(|p| p["queues"].as_array().unwrap())
        .map(|q| q.as_str().unwrap())
        .collect();
    let triggers = so["triggers"].as_vec().expect("triggers");
    let mut types = Vec::new();
    for t in triggers {
        let meta = &t["metadata"];
        match text(&t["type"], "trigger type") {
            "redis" => {
                let list = text(&meta["listName"], "listName");
                let queue = list.strip_prefix("rq:queue:").expect("RQ's queue key");
                assert!(queues.contains(&queue), "{queue} is not a pool's queue");
                text(&meta["listLength"], "listLength")
                    .parse::<u64>()
                    .expect("listLength is a quoted number");
                for key in ["addressFromEnv", "passwordFromEnv"] {
                    let var = text(&meta[key], key);
                    assert!(
                        env.contains_key(var),
                        "{key}: {var} is not in the container"
                    );
                }
                assert_eq!(env[text(&meta["addressFromEnv"], "")], "address");
                assert!(meta["address"].is_badvalue(), "the address comes from env");
            }
            "prometheus" => {
                let query = text(&meta["query"], "query");
                assert!(query.contains("rq_queue_length{"), "{query}");
                assert!(METRICS_SRC.contains("\"rq_queue_length\""));
                let queue = query.split("queue=\"").nth(1).unwrap().split('"').next();
                assert!(queues.contains(&queue.unwrap()), "{query}");
                text(&meta["threshold"], "threshold")
                    .parse::<f64>()
                    .expect("threshold is a quoted number");
                text(&meta["serverAddress"], "serverAddress");
            }
            other => panic!("unexpected trigger {other}"),
        }
        types.push(text(&t["type"], ""));
    }
    assert!(types.contains(&"redis") || types.contains(&"prometheus"));
}
