//! Tests of the registry of kinds (moved from object.rs): lookups by name, and decoding any
//! input through [`TypedObject`] without a panic.

use super::*;

#[test]
fn kind_lookup() {
    assert_eq!(kind_by_any_name("Claims").unwrap().kind, "Claim");
    assert_eq!(kind_by_any_name("rc").unwrap().kind, "ResourceClass");
    assert_eq!(kind_by_plural("allocations").unwrap().kind, "Allocation");
    assert!(kind_by_any_name("pods").is_none());
}

mod fuzz {
    //! Property tests standing in for fuzzing (cargo-fuzz needs a nightly toolchain): no input
    //! makes decoding panic, whatever its shape.
    use super::*;
    use crate::envelope::{API_VERSION, parse_documents};
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
                .map_or(serde_json::Value::Null, serde_json::Value::Number)),
            "[a-zA-Z0-9 ._/=!()<>\"'-]{0,12}".prop_map(serde_json::Value::from),
            prop_oneof![
                Just("4Gi"),
                Just("500m"),
                Just("1h"),
                Just("zone in (a"),
                Just("item.attributes.x > 1")
            ]
            .prop_map(serde_json::Value::from),
        ];
        let keys = prop_oneof![
            Just("apiVersion".to_string()),
            Just("kind".to_string()),
            Just("metadata".to_string()),
            Just("spec".to_string()),
            Just("status".to_string()),
            Just("name".to_string()),
            Just("namespace".to_string()),
            Just("requests".to_string()),
            Just("class".to_string()),
            Just("amount".to_string()),
            Just("count".to_string()),
            Just("selector".to_string()),
            Just("capacity".to_string()),
            Just("items".to_string()),
            Just("cidr".to_string()),
            Just("lease".to_string()),
            Just("duration".to_string()),
            Just("labels".to_string()),
            "[a-z]{1,6}",
        ];
        leaf.prop_recursive(4, 64, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map(keys.clone(), inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn decoding_any_json_never_panics(mut value in json(), kind_index in 0usize..8) {
            let info = kinds()[kind_index];
            if let serde_json::Value::Object(map) = &mut value {
                map.insert("apiVersion".into(), API_VERSION.into());
                map.insert("kind".into(), info.kind.into());
            }
            let _ = TypedObject::decode(info, &value);
            let bytes = serde_json::to_vec(&value).unwrap();
            let _ = TypedObject::parse_slice(info, &bytes, false).map(|o| o.check());
        }

        #[test]
        fn parsing_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), yaml in any::<bool>()) {
            let _ = TypedObject::parse_slice(kinds()[2], &bytes, yaml);
            let _ = parse_documents(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn compiling_any_cel_never_panics(source in "\\PC{0,60}") {
            if let Ok(selector) = crate::ItemSelector::compile(&source) {
                let schema = [("model".to_string(), crate::AttributeType::String)].into_iter().collect();
                let _ = selector.check(&schema);
            }
        }
    }
}
