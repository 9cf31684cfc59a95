//! The published JSON Schemas in `schemas/json/` match the Rust types.

use std::path::PathBuf;

/// Every checked-in schema equals the one generated from the types (and no stale file
/// remains). Set `GF_UPDATE_SCHEMAS=1` to rewrite them after changing a wire type.
#[test]
fn published_schemas_are_in_sync() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json");
    let update = std::env::var_os("GF_UPDATE_SCHEMAS").is_some();
    let mut expected_files = Vec::new();
    let mut stale = Vec::new();
    let index = ("index.json".to_string(), gf_schemas::rpc_index());
    let schemas = gf_schemas::json_schemas()
        .into_iter()
        .map(|(stem, s)| (format!("{stem}.schema.json"), s));
    for (file, schema) in schemas.chain(std::iter::once(index)) {
        let path = dir.join(&file);
        let text = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        if update {
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(file.clone());
        }
        expected_files.push(file);
    }
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !expected_files.contains(&name) {
            stale.push(format!("{name} (no longer generated)"));
        }
    }
    assert!(
        stale.is_empty(),
        "schemas out of date: {stale:?}; run `GF_UPDATE_SCHEMAS=1 cargo test -p gf-schemas`"
    );
}

/// Every schema file the index names exists.
#[test]
fn index_names_only_published_files() {
    let files: Vec<String> = gf_schemas::json_schemas()
        .into_iter()
        .map(|(s, _)| format!("{s}.schema.json"))
        .collect();
    let index = gf_schemas::rpc_index();
    for (subject, e) in index["subjects"].as_object().unwrap() {
        for side in ["request", "reply"] {
            let f = e[side].as_str().unwrap();
            assert!(
                files.contains(&f.to_string()),
                "{subject} {side}: {f} not published"
            );
        }
    }
}

/// The index describes every factory verb: single verbs with published request and
/// reply schemas, batch verbs as batches of a single verb.
#[test]
fn index_describes_factory_subjects() {
    use gf_schemas::names::{factory_rpc_pattern, FactoryVerb};
    let files: Vec<String> = gf_schemas::json_schemas()
        .into_iter()
        .map(|(s, _)| format!("{s}.schema.json"))
        .collect();
    let index = gf_schemas::rpc_index();
    let f = &index["factory_subjects"];
    assert_eq!(f["pattern"], "gf.rpc.w.{factory}.{verb}");
    for verb in FactoryVerb::ALL {
        match verb.batched() {
            None => {
                for side in ["request", "reply"] {
                    let file = f["verbs"][verb.as_str()][side].as_str().expect("named");
                    assert!(files.contains(&file.to_string()), "{verb} {side}: {file}");
                }
            }
            Some(single) => assert_eq!(
                index["batches"]["subjects"][factory_rpc_pattern(verb)],
                factory_rpc_pattern(single).as_str()
            ),
        }
    }
    for legacy in gf_schemas::names::rpc::LEGACY_FACTORY_SUBJECTS {
        assert!(
            index["subjects"].get(legacy).is_none(),
            "{legacy} is no longer served"
        );
    }
}
