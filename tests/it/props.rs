//! Property tests over the parsers of untrusted bytes: job YAML, rule YAML, manifests and the
//! pointer. Whatever the input, they return a value or an error naming the file; never a panic.

use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use wap::conf::JobConf;
use wap::conf::rules::RuleFile;
use wap::manifest::{Manifest, Pointer};

const CONF: &str = include_str!("../../conf/orders.yaml");
const RULES: &str = include_str!("../../audits/orders.yaml");

/// Characters that matter to YAML and JSON, plus a few ordinary ones.
const ALPHABET: &[u8] = b":-[]{}'\"\n\t #&*!|>%@`,?01a\\";

/// Applies edits (position, operation, character) to `text`: delete, insert or replace one
/// character, or truncate.
fn mutate(text: &str, edits: &[(usize, u8, usize)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for &(at, op, c) in edits {
        let c = ALPHABET[c % ALPHABET.len()] as char;
        let at = if chars.is_empty() {
            0
        } else {
            at % chars.len()
        };
        match op % 4 {
            0 if !chars.is_empty() => {
                chars.remove(at);
            }
            1 => chars.insert(at, c),
            2 if !chars.is_empty() => chars[at] = c,
            3 => chars.truncate(at),
            _ => {}
        }
    }
    chars.into_iter().collect()
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, usize)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>(), any::<usize>()), 1..6)
}

/// A real manifest's bytes (a published example version).
fn manifest_bytes() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let f = crate::fixture::Fixture::new();
        f.orders(
            "2024-01-01",
            &[(1, 1, "1.00", "placed"), (2, 2, "2.00", "shipped")],
        );
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            f.job()
                .run("2024-01-01", wap::job::Mode::Publish)
                .await
                .unwrap();
        });
        std::fs::read(
            f.table_dir()
                .join("_wap/manifests/00000000000000000001.json"),
        )
        .unwrap()
    })
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn job_yaml_edits_give_a_conf_or_an_error_naming_the_file(edits in edits()) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("conf")).unwrap();
        std::fs::create_dir_all(dir.path().join("audits")).unwrap();
        std::fs::write(dir.path().join("audits/orders.yaml"), RULES).unwrap();
        let path = dir.path().join("conf/orders.yaml");
        match JobConf::from_text(&path, mutate(CONF, &edits)) {
            Ok(conf) => prop_assert!(!conf.name.is_empty()),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("orders.yaml"), "{}", msg);
            }
        }
    }

    #[test]
    fn rule_yaml_edits_give_rules_or_an_error_with_file_and_line(edits in edits()) {
        match RuleFile::parse(Path::new("audits/rules.yaml"), &mutate(RULES, &edits)) {
            Ok(file) => prop_assert!(file.rules.iter().all(|r| !r.name.is_empty())),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("audits/rules.yaml:"), "{}", msg);
            }
        }
    }

    #[test]
    fn arbitrary_text_as_rules_never_panics(text in "\\PC{0,300}") {
        if let Err(e) = RuleFile::parse(Path::new("r.yaml"), &text) {
            prop_assert!(e.to_string().contains("r.yaml"));
        }
    }

    #[test]
    fn manifest_edits_are_refused_or_read_back_identically(edits in edits()) {
        let good = manifest_bytes();
        let text = String::from_utf8(good.to_vec()).unwrap();
        let bad = mutate(&text, &edits);
        let path = wap::layout::manifest_path(1);
        match Manifest::decode(&path, bad.as_bytes(), 1) {
            // Only edits that leave the content as it was (whitespace) may pass the checksum.
            Ok(m) => prop_assert_eq!(m, Manifest::decode(&path, good, 1).unwrap()),
            Err(e) => {
                let msg = e.to_string();
                prop_assert!(msg.contains("_wap/manifests/00000000000000000001.json"), "{}", msg);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_as_a_manifest_or_pointer_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let path = wap::layout::manifest_path(3);
        prop_assert!(Manifest::decode(&path, &bytes, 3).is_err());
        if let Err(e) = Pointer::decode(&bytes) {
            prop_assert!(e.to_string().contains("_wap/current"));
        }
    }
}
