//! Reads a `/metrics` page with a real Prometheus parser (the Python `prometheus_client`, from
//! Debian's `python3-prometheus-client`, installed by `scripts/setup`), so a test proves the
//! text is valid exposition format, not just that it contains some words.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

/// Debian's interpreter: a user's own Python (pyenv, venv) may lack the module.
const PYTHON: &str = "/usr/bin/python3";

const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
types = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    types[family.name] = family.type
    if not family.documentation:
        raise SystemExit("family %s has no HELP" % family.name)
    for s in family.samples:
        labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
        out[s.name + ("{%s}" % labels if labels else "")] = s.value
print(json.dumps({"samples": out, "types": types}))
"#;

/// Every sample as `name{label="value",…}` (labels sorted) → value, and each family's type.
/// Panics with the parser's complaint if the text is not valid.
pub fn parse(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let mut child = Command::new(PYTHON)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run /usr/bin/python3 (scripts/setup installs python3-prometheus-client)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the page to the parser");
    let out = child.wait_with_output().expect("the parser ran");
    assert!(
        out.status.success(),
        "prometheus_client refused the page: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("parser's JSON");
    let samples = parsed["samples"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    let types = parsed["types"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    (samples, types)
}
