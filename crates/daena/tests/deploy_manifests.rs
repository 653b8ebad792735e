//! The deployment assets checked against the binary: the Kubernetes manifests' probe paths,
//! ports, environment variable names and values, config file names and mount points, and the
//! Dockerfile's, all read by the real configuration loader.

use daena_app::config::{LoadOptions, load};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every document of every YAML file under `dir`, by file.
fn manifests(dir: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut dirs = vec![repo().join(dir)];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).expect("read");
                for doc in serde_norway::Deserializer::from_str(&text) {
                    let v: Value =
                        serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                    out.push((path.display().to_string(), v));
                }
            }
        }
    }
    out
}

fn kind<'a>(all: &'a [(String, Value)], kind: &str) -> Vec<&'a (String, Value)> {
    all.iter().filter(|(_, v)| v["kind"] == kind).collect()
}

/// A value the loader accepts for a variable whose value comes from a Secret.
fn secret_value(name: &str) -> String {
    match name {
        "DAENA_MEMORY_AES_KEY" => "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
        "DAENA_STORAGE_POSTGRES_URL" => "postgres://daena@db:5432/daena".into(),
        _ => "a-secret-value".into(),
    }
}

#[test]
fn the_kubernetes_manifests_match_the_binary() {
    let all = manifests("deploy/k8s");
    let config_maps = kind(&all, "ConfigMap");
    assert_eq!(config_maps.len(), 1, "one ConfigMap of config files");
    let files = config_maps[0].1["data"].as_object().expect("ConfigMap data");
    let secret_keys: Vec<String> = kind(&all, "Secret")
        .iter()
        .flat_map(|(_, s)| {
            s["stringData"].as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default()
        })
        .collect();
    let deployments = kind(&all, "Deployment");
    assert_eq!(deployments.len(), 2, "the single-node Deployment and the replicated one");
    for (file, d) in deployments {
        assert_eq!(d["metadata"]["name"], "daena-production", "{file}");
        let pod = &d["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        let ports: BTreeMap<String, u64> = c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .map(|p| (p["name"].as_str().expect("port name").to_owned(), p["containerPort"].as_u64().expect("port")))
            .collect();
        for probe in ["readinessProbe", "livenessProbe"] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], "/health", "{file}: {probe}");
            let port = get["port"].as_str().and_then(|name| ports.get(name)).expect("a named port");
            assert_eq!(*port, 8000, "{file}: {probe} reaches the HTTP port");
        }

        // Every variable is one the binary knows, with a value it accepts, and the config
        // files in the ConfigMap are the ones it reads, mounted where it looks.
        let mut env = BTreeMap::new();
        for var in c["env"].as_array().expect("env") {
            let name = var["name"].as_str().expect("name").to_owned();
            let value = match var["value"].as_str() {
                Some(v) => v.to_owned(),
                None => {
                    let key = var["valueFrom"]["secretKeyRef"]["key"].as_str().expect("a value or a secret key");
                    if file.ends_with("deploy/k8s/deployment.yaml") {
                        assert!(secret_keys.iter().any(|k| k == key), "{file}: {key} is not in secret.example.yaml");
                    }
                    secret_value(&name)
                }
            };
            env.insert(name, value);
        }
        let config_dir = tempfile::tempdir().expect("tempdir");
        for (name, text) in files {
            std::fs::write(config_dir.path().join(name), text.as_str().expect("file text")).expect("write");
        }
        let data_mount = env["DAENA_DATA_DIR"].clone();
        let config_mount = env.remove("DAENA_CONFIG_DIR").expect("DAENA_CONFIG_DIR");
        let loaded = load(&LoadOptions { config_dir: Some(config_dir.path().to_owned()), env, overrides: Vec::new() })
            .unwrap_or_else(|e| panic!("{file}: the binary refuses this configuration: {e}"));
        assert_eq!(loaded.files.len(), files.len(), "{file}: every ConfigMap file is one the loader reads");
        assert_eq!(loaded.config.server.listen.port(), 8000, "{file}");
        assert_eq!(loaded.config.data_dir, PathBuf::from(&data_mount), "{file}");
        assert!(loaded.secrets.ops_key.is_some() && loaded.secrets.memory_aes_key.is_some(), "{file}: both secrets");
        let metrics = loaded.config.server.metrics_listen.expect("metrics_listen in the ConfigMap");
        assert_eq!(Some(&u64::from(metrics.port())), ports.get("metrics"), "{file}: the metrics port");
        let mounts: BTreeMap<&str, &str> = c["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .map(|m| (m["mountPath"].as_str().expect("path"), m["name"].as_str().expect("name")))
            .collect();
        assert!(mounts.contains_key(data_mount.as_str()), "{file}: the data directory is a volume");
        let config_volume = mounts.get(config_mount.as_str()).expect("the config directory is mounted");
        let volume =
            pod["volumes"].as_array().expect("volumes").iter().find(|v| v["name"] == *config_volume).expect("volume");
        assert_eq!(volume["configMap"]["name"], config_maps[0].1["metadata"]["name"], "{file}");
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false, "{file}");
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{file}");
    }
    let services = kind(&all, "Service");
    assert_eq!(services[0].1["spec"]["ports"][0]["port"], 8000);
}

#[test]
fn the_dockerfile_matches_the_binary() {
    let text = read("deploy/Dockerfile");
    for needed in ["EXPOSE 8000", "DAENA_DATA_DIR=/var/lib/daena", "DAENA_CONFIG_DIR=/etc/daena", "CMD [\"serve\"]"] {
        assert!(text.contains(needed), "the Dockerfile lacks {needed}");
    }
    let user = text.lines().find_map(|l| l.strip_prefix("USER ")).expect("a USER line");
    assert!(!user.starts_with('0') && !user.starts_with("root"), "runs as root: {user}");
    // The image copies config/ to DAENA_CONFIG_DIR: those files must load.
    let env = BTreeMap::from([("DAENA_DATA_DIR".to_owned(), "/var/lib/daena".to_owned())]);
    let loaded = load(&LoadOptions { config_dir: Some(repo().join("config")), env, overrides: Vec::new() })
        .expect("config/ loads");
    assert_eq!(loaded.files.len(), 3);
}

#[test]
fn grafana_provisioning_loads_the_dashboard_from_prometheus() {
    let docs = manifests("deploy/grafana/provisioning");
    let source = docs.iter().find(|(p, _)| p.contains("datasources")).expect("a data source file");
    assert_eq!(source.1["datasources"][0]["type"], "prometheus");
    let provider = docs.iter().find(|(p, _)| p.contains("dashboards")).expect("a dashboard provider");
    assert_eq!(provider.1["providers"][0]["type"], "file");
    assert_eq!(provider.1["providers"][0]["options"]["path"], "/var/lib/grafana/dashboards/daena");
    let dashboard: Value = serde_json::from_str(&read("deploy/grafana/dashboards/daena.json")).expect("dashboard JSON");
    assert!(dashboard["panels"].as_array().is_some_and(|p| !p.is_empty()), "the dashboard has panels");
}
