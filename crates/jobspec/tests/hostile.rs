//! Hostile YAML: each input is refused with a clear error, quickly and in bounded memory
//! (the limits are structural; these tests check that they trip, not how fast).
#![allow(clippy::unwrap_used)]

use dutlab_jobspec::{JobError, MAX_DOCUMENT_BYTES, parse_job, parse_test_definition};

fn refused(text: &str) -> JobError {
    let e = match parse_job("evil.yaml", text) {
        Ok(job) => panic!("accepted: {}", job.name),
        Err(e) => e,
    };
    // The same input must be refused as a test definition too.
    assert!(parse_test_definition("evil.yaml", text).is_err());
    e
}

#[test]
fn billion_laughs() {
    let mut text = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for w in names.windows(2) {
        let refs = vec![format!("*{}", w[0]); 9].join(",");
        text.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
    }
    text.push_str("job_name: x\ndevice_type: q\nactions: [{boot: {method: q}}]\n");
    let e = refused(&text);
    assert!(e.reason.starts_with("invalid YAML"), "{e}");
    assert!(
        e.reason.contains("alias") || e.reason.contains("nodes"),
        "{e}"
    );
}

#[test]
fn long_string_amplified_by_aliases() {
    let big = "x".repeat(500_000);
    let refs = vec!["*a"; 1000].join(", ");
    let text = format!("a: &a \"{big}\"\nb: [{refs}]\n");
    assert!(text.len() < MAX_DOCUMENT_BYTES);
    let e = refused(&text);
    assert!(e.reason.starts_with("invalid YAML"), "{e}");
}

#[test]
fn deep_flow_nesting() {
    let text = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let e = refused(&text);
    assert!(e.reason.contains("invalid YAML"), "{e}");
    let text = format!("a: {}1{}", "{a: ".repeat(10_000), "}".repeat(10_000));
    let e = refused(&text);
    assert!(e.reason.contains("invalid YAML"), "{e}");
}

#[test]
fn deep_block_nesting() {
    let text = format!("{}x\n", "- ".repeat(10_000));
    let e = refused(&text);
    assert!(e.reason.contains("invalid YAML"), "{e}");
    assert!(
        e.reason.contains("nesting") || e.reason.contains("deep"),
        "{e}"
    );
}

#[test]
fn fifty_megabyte_scalar() {
    let text = format!("job_name: {}\n", "x".repeat(50 * 1024 * 1024));
    let e = refused(&text);
    assert_eq!(e.field, "(document)");
    assert!(e.reason.contains("larger than the limit"), "{e}");
}

/// Duplicate keys keep their last value (as LAVA's loader does), each with a warning naming
/// both lines; integer spellings of one key are one key.
#[test]
fn duplicate_keys() {
    let job = parse_job(
        "evil.yaml",
        "job_name: x\ndevice_type: q\nactions: [{boot: {method: q}}]\ndevice_type: evil\n",
    )
    .unwrap();
    assert_eq!(job.device_type, "evil");
    assert!(
        job.warnings
            .iter()
            .any(|w| w.field == "line 4" && w.message.contains("also at line 2")),
        "{:?}",
        job.warnings
    );
    let job = parse_job(
        "evil.yaml",
        "job_name: x\ndevice_type: q\nmetadata: {11: a, 0xB: b}\nactions: [{boot: {method: q}}]\n",
    )
    .unwrap();
    assert_eq!(job.metadata["11"], "b");
}

/// A flood of duplicate keys stays within the node budget and lists a bounded number of
/// warnings.
#[test]
fn duplicate_key_flood() {
    let mut text = String::from("job_name: x\ndevice_type: q\nactions: [{boot: {method: q}}]\n");
    text.push_str(&"priority: 1\n".repeat(50_000));
    let job = parse_job("evil.yaml", &text).unwrap();
    assert!(job.warnings.len() <= dutlab_jobspec::MAX_DUPLICATES + 1);
    let e = refused(&format!(
        "job_name: x\ndevice_type: q\n{}",
        "p: 1\n".repeat(120_000)
    ));
    assert!(
        e.reason.contains("nodes") || e.reason.contains("bytes"),
        "{e}"
    );
}

#[test]
fn many_documents() {
    let e = refused(&"---\na: 1\n".repeat(10_000));
    assert!(e.reason.starts_with("invalid YAML"), "{e}");
}

#[test]
fn many_nodes() {
    // Under the size limit but with a quarter of a million tiny nodes.
    let text = format!("a: [{}]\n", vec!["1"; 300_000].join(","));
    assert!(text.len() < MAX_DOCUMENT_BYTES);
    let e = refused(&text);
    assert!(e.reason.starts_with("invalid YAML"), "{e}");
}

#[test]
fn odd_bytes_and_tags() {
    for text in [
        "\u{feff}job_name: x\n",
        "job_name: !!binary aGVsbG8=\n",
        "job_name: !custom x\n",
        "job_name: \"\\x00\"\n",
        "%YAML 1.2\n---\njob_name: x\n",
        "job_name: x\n...\n",
        "&a [*a]",
        "*undefined",
        "? ? ? a",
        "\t- a",
    ] {
        // Must not panic; most of these are refused (no actions), which is fine.
        let _ = parse_job("odd.yaml", text);
        let _ = parse_test_definition("odd.yaml", text);
    }
}
