//! The alerting rules (deploy/prometheus/alerts.yml) are checked and unit-tested by Prometheus' own
//! `promtool`, every alert has a summary, a description and a runbook section, the Kubernetes
//! PrometheusRule carries the same rules, and every metric a rule reads is one the binary exports.

use std::collections::BTreeSet;
use std::process::Command;

use serde_norway::Value;

use crate::deploy::{exported_metric_names, metric_names, read, repo, str_at, yaml, yaml_documents};

const RULES: &str = "deploy/prometheus/alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/alerts.test.yml";

/// Runs `promtool` with `args`, failing loudly when it is not installed.
fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool").args(args).current_dir(repo("")).output().unwrap_or_else(|e| {
        panic!(
            "promtool is not runnable ({e}): install Debian's prometheus package \
             (`apt-get install -y --no-install-recommends prometheus`; scripts/test.sh does)"
        )
    });
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {} failed:\n{text}", args.join(" "));
    text
}

/// Every rule of every group in a rule file's `groups`.
fn rules(groups: &Value) -> Vec<&Value> {
    groups.as_sequence().expect("groups is a list").iter().flat_map(|g| g["rules"].as_sequence().unwrap()).collect()
}

fn alert_names() -> Vec<String> {
    let file = yaml(RULES);
    rules(&file["groups"]).iter().map(|r| str_at(r, &["alert"]).expect("only alerting rules").to_owned()).collect()
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let checked = promtool(&["check", "rules", RULES]);
    assert!(checked.contains(&format!("SUCCESS: {} rules found", alert_names().len())), "{checked}");
    let tested = promtool(&["test", "rules", RULE_TESTS]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // The compose profile's Prometheus loads the rules: its configuration names them.
    let config = promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
    assert!(config.contains("SUCCESS: 1 rule files found"), "{config}");
}

/// Every alert has a unit test in which it fires and one in which it must stay silent.
#[test]
fn every_alert_is_unit_tested_firing_and_silent() {
    let tests = yaml(RULE_TESTS);
    let mut fires = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for test in tests["tests"].as_sequence().expect("tests") {
        for case in test["alert_rule_test"].as_sequence().expect("alert_rule_test") {
            let name = str_at(case, &["alertname"]).unwrap().to_owned();
            match case.get("exp_alerts").and_then(Value::as_sequence) {
                Some(expected) if !expected.is_empty() => fires.insert(name),
                _ => silent.insert(name),
            };
        }
    }
    for alert in alert_names() {
        assert!(fires.contains(&alert), "no unit test in {RULE_TESTS} expects {alert} to fire");
        assert!(silent.contains(&alert), "no unit test in {RULE_TESTS} expects {alert} to stay silent");
    }
}

/// GitHub's anchor for a Markdown heading.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn every_alert_has_a_summary_a_description_and_a_runbook_section() {
    let runbook = read("docs/runbook.md");
    let anchors: BTreeSet<String> = runbook.lines().filter_map(|l| l.strip_prefix("## ")).map(anchor).collect();
    let file = yaml(RULES);
    for rule in rules(&file["groups"]) {
        let alert = str_at(rule, &["alert"]).unwrap();
        for key in ["summary", "description", "runbook_url"] {
            let text = str_at(rule, &["annotations", key]).unwrap_or_default();
            assert!(!text.trim().is_empty(), "{alert} has no {key}");
        }
        assert!(matches!(str_at(rule, &["labels", "severity"]), Some("warning" | "critical")), "{alert}: severity");
        let url = str_at(rule, &["annotations", "runbook_url"]).unwrap();
        let (page, section) = url.split_once('#').unwrap_or_else(|| panic!("{alert}: {url} names no section"));
        assert!(page.ends_with("/docs/runbook.md"), "{alert}: {url} is not docs/runbook.md");
        assert_eq!(section, anchor(alert), "{alert}: the runbook section is named after the alert");
        assert!(anchors.contains(section), "docs/runbook.md has no section {section} for {alert}");
        let body = runbook.split(&format!("## {alert}\n")).nth(1).unwrap().split("\n## ").next().unwrap();
        for part in ["**Means:**", "**Check:**", "**Do:**"] {
            assert!(body.contains(part), "docs/runbook.md, {alert}: no {part}");
        }
    }
}

#[test]
fn the_kubernetes_prometheus_rule_carries_the_same_rules() {
    let documents = yaml_documents(&repo("deploy/k8s/prometheusrule.yaml"));
    assert_eq!(documents.len(), 1);
    let rule = &documents[0];
    assert_eq!(str_at(rule, &["kind"]), Some("PrometheusRule"));
    assert_eq!(rule["spec"]["groups"], yaml(RULES)["groups"], "prometheusrule.yaml and alerts.yml differ");
    let kustomization = yaml("deploy/k8s/kustomization.yaml");
    let resources: Vec<&str> =
        kustomization["resources"].as_sequence().unwrap().iter().filter_map(Value::as_str).collect();
    assert!(resources.contains(&"prometheusrule.yaml"), "{resources:?}");
    assert!(resources.contains(&"podmonitor.yaml"), "{resources:?}");
    // The rules select job="pii-ingest": the PodMonitor takes the job name from the pod label whose
    // value is pii-ingest.
    let monitor = yaml("deploy/k8s/podmonitor.yaml");
    let job_label = str_at(&monitor, &["spec", "jobLabel"]).unwrap();
    assert_eq!(str_at(&monitor, &["spec", "selector", "matchLabels", job_label]), Some("pii-ingest"));
    let compose = yaml("docker-compose.yml");
    let mounts = compose["services"]["prometheus"]["volumes"].as_sequence().unwrap();
    assert!(mounts.iter().filter_map(Value::as_str).any(|m| m.starts_with("./deploy/prometheus/alerts.yml:")));
    let config = yaml("deploy/prometheus/prometheus.yml");
    assert_eq!(str_at(&config["scrape_configs"][0], &["job_name"]), Some("pii-ingest"));
}

#[tokio::test]
async fn alert_rules_read_only_metrics_the_binary_exports() {
    let file = yaml(RULES);
    let read_by_rules: BTreeSet<String> =
        rules(&file["groups"]).iter().flat_map(|r| metric_names(str_at(r, &["expr"]).unwrap())).collect();
    for required in [
        "pii_ingest_queue_messages",
        "pii_ingest_messages_deleted_total",
        "pii_ingest_quarantined_total",
        "pii_ingest_delete_failures_total",
        "pii_ingest_retries_total",
        "pii_ingest_commit_seconds",
        "pii_ingest_dependency_up",
    ] {
        assert!(read_by_rules.contains(required), "no rule reads {required}");
    }
    let exported = exported_metric_names().await;
    let unknown: Vec<&String> = read_by_rules.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the rules read metrics the binary does not export: {unknown:?}\nexported: {exported:?}"
    );
}
