//! The committed OpenAPI file is what the code generates.

use std::path::PathBuf;

#[test]
fn committed_openapi_matches_the_code() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let generated = dutlab_controller::openapi::openapi_json();
    if std::env::var_os("DUTLAB_WRITE_OPENAPI").is_some() {
        std::fs::write(&path, format!("{generated}\n")).expect("write docs/openapi.json");
    }
    let committed = std::fs::read_to_string(&path).expect("docs/openapi.json exists");
    assert_eq!(
        committed.trim_end(),
        generated.trim_end(),
        "docs/openapi.json is stale: regenerate with DUTLAB_WRITE_OPENAPI=1 cargo test -p dutlab-controller --test openapi"
    );
    // Every route but /healthz declares the bearer scheme.
    let doc: serde_json::Value = serde_json::from_str(&generated).expect("json");
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 14, "{} paths", paths.len());
    for (path, methods) in paths {
        for (method, op) in methods.as_object().expect("methods") {
            let secured = op.get("security").is_some();
            assert_eq!(secured, path != "/healthz", "{method} {path}");
        }
    }
}
