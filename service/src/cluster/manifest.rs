//! Reading cluster state from the YAML that `kubectl get services,endpointslices,nodes -A -o yaml`
//! prints (a `List`), or from multi-document YAML of the same objects.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{from_endpoint_slice, from_node, from_service, ClusterState};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("malformed YAML: {0}")]
    Yaml(String),
    #[error("no objects: the file holds no YAML document (an empty cluster is written `kind: List` with `items: []`)")]
    Empty,
    #[error("document {document}: {reason}")]
    Document { document: usize, reason: String },
    #[error("document {document}, item {item} ({kind} {name}): {reason}")]
    Object { document: usize, item: String, kind: String, name: String, reason: String },
}

/// Parses every Service, EndpointSlice and Node in `text`. Other kinds (Pods, Endpoints, ...) are
/// skipped: `kubectl get all -o yaml` output is accepted as it is. An object of a kind herald reads
/// that does not parse is an error rather than skipped, so a damaged file never reads as a cluster
/// that lost its services.
pub fn parse_manifest(text: &str) -> Result<ClusterState, ManifestError> {
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    let mut state = ClusterState::default();
    let mut saw_document = false;
    for (index, document) in documents.into_iter().enumerate() {
        let number = index + 1;
        match document {
            Value::Null => continue,
            Value::Object(_) => {}
            other => {
                return Err(ManifestError::Document {
                    document: number,
                    reason: format!("expected a Kubernetes object, found {}", json_type(&other)),
                });
            }
        }
        saw_document = true;
        let kind = document.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
        if kind == "List" || (kind.ends_with("List") && document.get("items").is_some()) {
            let items = match document.get("items") {
                Some(Value::Array(items)) => items,
                Some(Value::Null) | None => continue,
                Some(other) => {
                    return Err(ManifestError::Document {
                        document: number,
                        reason: format!("`items` must be a list, found {}", json_type(other)),
                    });
                }
            };
            let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
            for (i, item) in items.iter().enumerate() {
                add_object(&mut state, number, &i.to_string(), item, item_kind)?;
            }
        } else {
            add_object(&mut state, number, "-", &document, None)?;
        }
    }
    if !saw_document {
        return Err(ManifestError::Empty);
    }
    Ok(state)
}

fn add_object(
    state: &mut ClusterState,
    document: usize,
    item: &str,
    object: &Value,
    implied_kind: Option<&str>,
) -> Result<(), ManifestError> {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string();
    let kind = match object.get("kind").and_then(Value::as_str).or(implied_kind) {
        Some(kind) => kind.to_string(),
        None => {
            return Err(ManifestError::Object {
                document,
                item: item.to_string(),
                kind: "<no kind>".to_string(),
                name,
                reason: "an object needs `kind`".to_string(),
            });
        }
    };
    let error = |reason: String| ManifestError::Object {
        document,
        item: item.to_string(),
        kind: kind.clone(),
        name: name.clone(),
        reason,
    };
    if !object.is_object() {
        return Err(error(format!("expected an object, found {}", json_type(object))));
    }
    if object.pointer("/metadata/name").and_then(Value::as_str).is_none()
        && matches!(kind.as_str(), "Service" | "EndpointSlice" | "Node")
    {
        // `name: no` is YAML 1.1's `false`: say so rather than "missing".
        let found = object.pointer("/metadata/name").filter(|v| !v.is_null());
        return Err(error(found.map_or("`metadata.name` is missing".to_string(), |v| {
            format!("`metadata.name` must be a string, found {} (quote it)", json_type(v))
        })));
    }
    match kind.as_str() {
        "Service" => state.insert_service(from_service(&typed::<core::Service>(object).map_err(error)?)),
        "EndpointSlice" => state
            .insert_endpoint_slice(from_endpoint_slice(&typed::<discovery::EndpointSlice>(object).map_err(error)?)),
        "Node" => state.insert_node(from_node(&typed::<core::Node>(object).map_err(error)?)),
        "List" => return Err(error("a List inside a List is not something kubectl prints".to_string())),
        _ => {}
    }
    Ok(())
}

fn typed<T: DeserializeOwned>(object: &Value) -> Result<T, String> {
    // serde quotes a value of the wrong type whole: keep the message about a huge one short.
    T::deserialize(object).map_err(|e| {
        let (e, n) = (e.to_string(), e.to_string().chars().count());
        if n <= 400 { e } else { format!("{}…{}", e.chars().take(200).collect::<String>(), e.chars().skip(n - 100).collect::<String>()) }
    })
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
