//! Deployment files stay in step with the code: docker-compose.yml and its monitoring profile, the
//! Grafana dashboard (every metric it plots is one the real binary exports), the Prometheus and
//! Grafana provisioning, and the Kubernetes manifests (they parse, the Deployment keeps its safety
//! settings, and the ConfigMap's variables are configuration keys the binary accepts).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_norway::Value;

use crate::support::binary::{free_port, scrape_until, serve};
use crate::support::{TestEnv, binary_env, logins};

pub(crate) fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

pub(crate) fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every YAML document in `path`, anchors resolved and `<<` merge keys applied.
pub(crate) fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            let mut value =
                Value::deserialize(document).unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
            value.apply_merge().unwrap_or_else(|e| panic!("{}: merge keys: {e}", path.display()));
            value
        })
        .filter(|value| !value.is_null())
        .collect()
}

pub(crate) fn yaml(path: &str) -> Value {
    let mut documents = yaml_documents(&repo(path));
    assert_eq!(documents.len(), 1, "{path} holds one YAML document");
    documents.remove(0)
}

pub(crate) fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(value, |v, key| v.get(*key))?.as_str()
}

fn keys(value: &Value) -> Vec<String> {
    value.as_mapping().map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

// ---------------------------------------------------------------- docker compose

#[test]
fn compose_file_is_valid_and_has_a_monitoring_profile() {
    let compose = yaml("docker-compose.yml");
    let services = compose.get("services").and_then(Value::as_mapping).expect("docker-compose.yml has services");
    let names: BTreeSet<String> = keys(&compose["services"]).into_iter().collect();
    for required in ["postgres", "localstack", "migrate", "seed", "ingester", "prometheus", "grafana"] {
        assert!(names.contains(required), "service {required} is missing: {names:?}");
    }
    for (name, service) in services {
        let name = name.as_str().unwrap();
        // `depends_on` is either a list of names or a map of name -> condition.
        let targets: Vec<String> = match service.get("depends_on") {
            None => vec![],
            Some(Value::Sequence(list)) => list.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
            Some(map @ Value::Mapping(_)) => keys(map),
            Some(other) => panic!("{name}: depends_on is neither a list nor a map: {other:?}"),
        };
        for target in targets {
            assert!(names.contains(&target), "{name} depends on {target}, which is not a service");
        }
        let has_image_or_build = service.get("image").is_some() || service.get("build").is_some();
        assert!(has_image_or_build, "{name} has neither image nor build");
    }

    let profile_of = |name: &str| -> Vec<String> {
        match services.get(name).and_then(|s| s.get("profiles")) {
            Some(Value::Sequence(list)) => list.iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
            _ => vec![],
        }
    };
    let monitoring: BTreeSet<&str> =
        names.iter().map(String::as_str).filter(|n| profile_of(n).iter().any(|p| p == "monitoring")).collect();
    assert_eq!(monitoring, BTreeSet::from(["grafana", "prometheus"]), "the monitoring profile");
    assert!(profile_of("ingester").is_empty(), "the ingester runs without a profile");

    // The ingester serves metrics beyond its container, on the port Prometheus scrapes.
    let listen = str_at(&compose, &["services", "ingester", "environment", "PII_INGEST__METRICS__LISTEN"])
        .expect("the ingester sets PII_INGEST__METRICS__LISTEN");
    assert_eq!(listen, "0.0.0.0:9898");
    // The merge key kept the shared environment.
    assert!(str_at(&compose, &["services", "ingester", "environment", "PII_INGEST__POSTGRES__URL"]).is_some());

    // Every long-running service has a health check; the ingester's is a subcommand the binary has.
    for service in ["postgres", "localstack", "ingester"] {
        assert!(services.get(service).and_then(|s| s.get("healthcheck")).is_some(), "{service} has no healthcheck");
    }
    let test = compose["services"]["ingester"]["healthcheck"]["test"].as_sequence().expect("a healthcheck test list");
    let test: Vec<&str> = test.iter().filter_map(Value::as_str).collect();
    assert_eq!(test[..2], ["CMD", "pii-ingest"], "{test:?}");
    let help = crate::support::binary::bare().args(&test[2..]).arg("--help").output().unwrap();
    assert!(help.status.success(), "the binary does not accept {test:?}");

    // Files bind-mounted into the monitoring services exist.
    for service in ["prometheus", "grafana"] {
        let volumes = services.get(service).and_then(|s| s.get("volumes")).and_then(Value::as_sequence);
        let volumes =
            volumes.unwrap_or_else(|| panic!("{service} mounts nothing: its config and dashboards are files"));
        let mut mounted = 0;
        for volume in volumes.iter().filter_map(Value::as_str) {
            let source = volume.split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(repo(source).exists(), "{service} mounts {source}, which does not exist");
                mounted += 1;
            }
        }
        assert!(mounted > 0, "{service} bind-mounts no file of the repository");
    }
}

#[test]
fn every_compose_service_that_masks_reads_the_key_from_a_secret_file() {
    // `run` masks rows and `seed --file` keys each line with an HMAC under the masking key: both stop
    // at start without it. The seed service once lacked it, so `docker compose up` stopped at the seed.
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().expect("docker-compose.yml has services");
    let mut masking = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let command: Vec<&str> = match service.get("command") {
            Some(Value::Sequence(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => continue,
        };
        let seeds_with_keys = command[0] == "seed" && command.contains(&"--file") && !command.contains(&"--no-keys");
        if !(matches!(command[0], "run" | "replay") || seeds_with_keys) {
            continue;
        }
        masking.insert(name);
        // A compose secret (a file), never an environment variable (visible in `docker inspect`).
        let env = keys(&service["environment"]);
        assert!(!env.iter().any(|k| k == "PII_INGEST__MASKING__KEY"), "{name}: {env:?}");
        let key_file = str_at(service, &["environment", "PII_INGEST__MASKING__KEY_FILE"]);
        assert_eq!(key_file, Some("/run/secrets/masking_key"), "{name}: PII_INGEST__MASKING__KEY_FILE");
        let secrets = service.get("secrets").and_then(Value::as_sequence);
        let secrets: Vec<&str> = secrets.into_iter().flatten().filter_map(Value::as_str).collect();
        assert_eq!(secrets, ["masking_key"], "{name}: secrets");
        // The merge key kept the shared environment next to the key file.
        assert!(str_at(service, &["environment", "PII_INGEST__POSTGRES__URL"]).is_some(), "{name}: environment");
    }
    assert_eq!(masking, BTreeSet::from(["ingester", "seed"]), "the services that mask");
    assert!(str_at(&compose, &["secrets", "masking_key", "file"]).is_some(), "masking_key is a file secret");
}

#[test]
fn the_dockerfile_stubs_and_copies_every_target_cargo_toml_declares() {
    // cargo refuses a manifest whose declared target file is missing: the dependency stage, which
    // holds only Cargo.toml and Cargo.lock, must stub each one (the first image build once failed on
    // the missing benches/masking.rs), and the crate stage must copy the real one.
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml parses");
    let mut declared = vec!["src/main.rs".to_owned(), "src/lib.rs".to_owned()];
    for (kind, folder) in [("bin", "src/bin"), ("bench", "benches"), ("example", "examples"), ("test", "tests")] {
        for target in manifest.get(kind).and_then(toml::Value::as_array).into_iter().flatten() {
            let name = target["name"].as_str().expect("a declared target has a name");
            let path = target.get("path").and_then(toml::Value::as_str);
            declared.push(path.map_or_else(|| format!("{folder}/{name}.rs"), str::to_owned));
        }
    }
    assert!(declared.iter().any(|p| p == "benches/masking.rs"), "{declared:?}");

    let dockerfile = read("Dockerfile");
    let stage_start = dockerfile.find("COPY Cargo.toml Cargo.lock").expect("the dependency stage copies the manifest");
    let crate_start = dockerfile.find("COPY src ").expect("the crate stage copies src/");
    assert!(stage_start < crate_start, "the dependency stage comes first");
    let (stubs, crate_stage) = (&dockerfile[stage_start..crate_start], &dockerfile[crate_start..]);
    for path in &declared {
        assert!(stubs.contains(&format!("> {path}")) || stubs.contains(&format!("touch {path}")), "no stub for {path}");
        let folder = path.split('/').next().unwrap();
        assert!(crate_stage.contains(&format!("COPY {folder} ./{folder}")), "the crate stage does not copy {folder}/");
    }
}

#[test]
fn prometheus_scrapes_the_ingester_and_grafana_is_provisioned() {
    let prometheus = yaml("deploy/prometheus/prometheus.yml");
    let jobs = prometheus["scrape_configs"].as_sequence().expect("scrape_configs");
    let targets: Vec<&str> = jobs
        .iter()
        .filter_map(|job| job.get("static_configs")?.as_sequence())
        .flatten()
        .filter_map(|config| config.get("targets")?.as_sequence())
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(targets.contains(&"ingester:9898"), "{targets:?}");

    let datasources = yaml("deploy/grafana/provisioning/datasources/prometheus.yaml");
    let datasource = &datasources["datasources"][0];
    assert_eq!(str_at(datasource, &["type"]), Some("prometheus"));
    assert_eq!(str_at(datasource, &["uid"]), Some("prometheus"), "the dashboard's default datasource uid");
    assert_eq!(str_at(datasource, &["url"]), Some("http://prometheus:9090"));

    let dashboards = yaml("deploy/grafana/provisioning/dashboards/pii-ingest.yaml");
    let path = str_at(&dashboards["providers"][0], &["options", "path"]).expect("a provider path");
    assert_eq!(path, "/var/lib/grafana/dashboards", "where docker-compose.yml mounts dashboard.json");
}

// ---------------------------------------------------------------- Grafana dashboard

/// Every `pii_ingest_*` name in `text`, without the histogram series suffixes.
pub(crate) fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("pii_ingest_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_lowercase() || c == '_')).unwrap_or(tail.len());
        let name = &tail[..end];
        let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
        names.insert(base.to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every PromQL expression in a dashboard (panel targets and query variables).
fn expressions(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::String(s)) if s.contains("pii_ingest_") => out.push(s.clone()),
                    _ => expressions(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

/// The metric families `pii-ingest run` exports, read from its /metrics once a batch has been
/// committed (histograms appear with their first observation).
pub(crate) async fn exported_metric_names() -> BTreeSet<String> {
    let TestEnv { db, queue } = TestEnv::new(5).await;
    queue.send_bodies(logins(3)).await;
    let dir = tempfile::tempdir().unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let child = serve(&binary_env(&db, &queue, dir.path()), &addr);
    let body = scrape_until(&addr, Duration::from_secs(30), |body| {
        [
            "pii_ingest_rows_written_total 3",
            "pii_ingest_commit_seconds_bucket",
            "pii_ingest_queue_messages",
            "pii_ingest_ledger_entries",
            "pii_ingest_dependency_up",
        ]
        .iter()
        .all(|want| body.contains(want))
    });
    assert!(child.stop().success(), "SIGTERM exits 0");
    let body = body.expect("/metrics never showed the 3 rows written, the histograms and the gauges");
    // Families from their `# TYPE` lines and from the samples themselves.
    body.lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split_whitespace().next(),
            None if !line.starts_with('#') => line.split(['{', ' ']).next(),
            None => None,
        })
        .flat_map(metric_names)
        .collect()
}

#[tokio::test]
async fn dashboard_plots_only_metrics_the_binary_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/dashboard.json")).expect("dashboard.json is valid JSON");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "a current dashboard schema");
    assert_eq!(dashboard["uid"], "pii-ingest");

    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().expect("panel id")), "duplicate panel id {}", panel["id"]);
        if panel["type"] != "row" {
            assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "panel {}", panel["title"]);
            assert!(
                panel["targets"].as_array().is_some_and(|t| !t.is_empty()),
                "panel {} plots nothing",
                panel["title"]
            );
        }
    }
    let variables = dashboard["templating"]["list"].as_array().expect("templating");
    assert!(variables.iter().any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"));

    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    let plotted: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for required in [
        "pii_ingest_messages_received_total",
        "pii_ingest_rows_written_total",
        "pii_ingest_messages_deleted_total",
        "pii_ingest_duplicates_total",
        "pii_ingest_quarantined_total",
        "pii_ingest_retries_total",
        "pii_ingest_queue_messages",
        "pii_ingest_commit_seconds",
        "pii_ingest_batch_rows",
        "pii_ingest_ledger_entries",
        "pii_ingest_delete_failures_total",
        "pii_ingest_abandoned_total",
    ] {
        assert!(plotted.contains(required), "the dashboard does not plot {required}");
    }
    // Quantiles are taken over the histogram buckets.
    assert!(
        exprs.iter().any(|e| e.contains("histogram_quantile(0.99") && e.contains("pii_ingest_commit_seconds_bucket"))
    );

    let exported = exported_metric_names().await;
    let unknown: Vec<&String> = plotted.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard plots metrics the binary does not export: {unknown:?}\nexported: {exported:?}"
    );
}

// ---------------------------------------------------------------- Kubernetes

fn k8s_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            k8s_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Every Kubernetes object under deploy/k8s, with the file it came from.
fn k8s_objects() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    k8s_files(&repo("deploy/k8s"), &mut files);
    files.sort();
    assert!(!files.is_empty());
    files.into_iter().flat_map(|file| yaml_documents(&file).into_iter().map(move |doc| (file.clone(), doc))).collect()
}

fn object<'a>(objects: &'a [(PathBuf, Value)], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .map(|(_, o)| o)
        .find(|o| str_at(o, &["kind"]) == Some(kind) && str_at(o, &["metadata", "name"]) == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name} under deploy/k8s"))
}

#[test]
fn k8s_manifests_parse_and_keep_their_safety_settings() {
    let objects = k8s_objects();
    for (file, o) in &objects {
        for field in [&["apiVersion"][..], &["kind"], &["metadata", "name"]] {
            if str_at(o, &["kind"]) == Some("Kustomization") && field.len() == 2 {
                continue; // a kustomization has no metadata
            }
            assert!(str_at(o, field).is_some(), "{}: an object without {}", file.display(), field.join("."));
        }
    }
    // kustomization.yaml lists files that exist.
    let kustomization = objects
        .iter()
        .map(|(_, o)| o)
        .find(|o| str_at(o, &["kind"]) == Some("Kustomization"))
        .expect("deploy/k8s/kustomization.yaml");
    for resource in kustomization["resources"].as_sequence().unwrap() {
        let resource = resource.as_str().unwrap();
        assert!(repo("deploy/k8s").join(resource).exists(), "kustomization lists missing {resource}");
    }

    let deployment = object(&objects, "Deployment", "pii-ingest");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["terminationGracePeriodSeconds"].as_u64(), Some(60));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(str_at(container, &["livenessProbe", "httpGet", "path"]), Some("/healthz"));
    assert_eq!(str_at(container, &["readinessProbe", "httpGet", "path"]), Some("/readyz"));

    // The ledger directory is a writable emptyDir.
    let mount = container["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| str_at(m, &["mountPath"]) == Some("/app/var"))
        .expect("/app/var is mounted");
    let volume_name = str_at(mount, &["name"]).unwrap();
    let volume = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| str_at(v, &["name"]) == Some(volume_name))
        .expect("the /app/var volume is declared");
    assert!(volume.get("emptyDir").is_some(), "/app/var is an emptyDir");

    // The masking key comes from a Secret, never from the ConfigMap.
    let env = container["env"].as_sequence().unwrap();
    let key = env.iter().find(|e| str_at(e, &["name"]) == Some("PII_INGEST__MASKING__KEY")).expect("masking key env");
    let secret_ref = &key["valueFrom"]["secretKeyRef"];
    let secret = object(&objects, "Secret", str_at(secret_ref, &["name"]).unwrap());
    let placeholder = str_at(secret, &["stringData", str_at(secret_ref, &["key"]).unwrap()]).unwrap();
    assert!(placeholder.contains("REPLACE-ME"), "the example Secret holds a placeholder, not a key");

    let config = object(&objects, "ConfigMap", "pii-ingest-config");
    assert!(config["data"].get("PII_INGEST__MASKING__KEY").is_none(), "no key in the ConfigMap");
    assert!(str_at(config, &["data", "PII_INGEST__LEDGER__PATH"]).unwrap().starts_with("/app/var/"));
    let listen = str_at(config, &["data", "PII_INGEST__METRICS__LISTEN"]).unwrap();
    assert_eq!(
        listen.rsplit(':').next().unwrap(),
        container["ports"][0]["containerPort"].as_u64().unwrap().to_string()
    );

    let scaled = object(&objects, "ScaledObject", "pii-ingest");
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(str_at(trigger, &["type"]), Some("aws-sqs-queue"));
    assert!(str_at(trigger, &["metadata", "queueLength"]).is_some_and(|n| n.parse::<u32>().is_ok()));
    assert_eq!(str_at(&scaled["spec"], &["scaleTargetRef", "name"]), Some("pii-ingest"));

    let job = object(&objects, "Job", "pii-ingest-migrate");
    let args: Vec<&str> = job["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"migrate"), "{args:?}");
}

/// The ConfigMap's variables are configuration keys the binary accepts (config sections use
/// `deny_unknown_fields`): `check-config` with exactly the pod's environment must succeed.
#[test]
fn k8s_config_is_accepted_by_the_binary() {
    let objects = k8s_objects();
    let config = object(&objects, "ConfigMap", "pii-ingest-config");
    let deployment = object(&objects, "Deployment", "pii-ingest");
    let args: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_args = &args[..args.iter().position(|a| *a == "run").expect("the container runs `run`")];
    let mut command = crate::support::binary::bare();
    command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).args(config_args).arg("check-config");
    for (name, value) in config["data"].as_mapping().unwrap() {
        command.env(name.as_str().unwrap(), value.as_str().expect("ConfigMap values are strings"));
    }
    command.env("PII_INGEST__MASKING__KEY", "k8s-test-key-0123456789-0123456789-abcdef");
    command.env("PII_INGEST__POSTGRES__URL", "postgres://pii_ingest:pw@db.internal:5432/pii_ingest");
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check-config refused the pod's environment: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("# masking key: ok"), "{stdout}");
    // The image's config.toml (written for the local emulator) is not what the pod uses.
    assert!(!stdout.contains("endpoint_url"), "no emulator endpoint in the pod's configuration: {stdout}");
}
