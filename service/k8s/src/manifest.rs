//! Reading cluster state from the YAML that `kubectl get services,endpointslices,nodes -A -o yaml`
//! prints (a `List`), or from multi-document YAML of the same objects.

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use serde::de::{DeserializeOwned, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::cluster::{ClusterState, EndpointSlice, Node, Service};
use crate::convert::{from_endpoint_slice, from_node, from_service};

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("malformed YAML: {0}")]
    Yaml(String),
    #[error(
        "no objects: the file holds no YAML document (an empty cluster is written `kind: List` with `items: []`)"
    )]
    Empty,
    #[error("document {document}: {reason}")]
    Document { document: usize, reason: String },
    #[error("document {document}, item {item} ({kind} {name}): {reason}")]
    Object {
        document: usize,
        item: String,
        kind: String,
        name: String,
        reason: String,
    },
}

/// Parses every Service, EndpointSlice and Node in `text`. Other kinds (Pods, Endpoints, ...) are
/// skipped: `kubectl get all -o yaml` output is accepted as it is. An object of a kind herald reads
/// that does not parse is an error rather than skipped, so a damaged file never reads as a cluster
/// that lost its services.
///
/// Objects are read as the YAML streams by, one at a time: the YAML tree of one object exists at a
/// time, not the tree of the whole file (a `List` of a large cluster is one document, and as one
/// tree takes many times its size in memory: BENCHMARKS.md, figures behind choices).
///
/// A large `List` as kubectl prints it is read in parts, one per core ([`read_list_in_parts`]);
/// anything else, and any part that does not read, is read whole, which is what reports errors.
pub fn parse_manifest(text: &str) -> Result<ClusterState, ManifestError> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if text.len() >= PARTS_FROM_BYTES
        && cores >= 2
        && let Some(state) = read_list_in_parts(text, cores.min(8))
    {
        return Ok(state);
    }
    read_whole(text)
}

/// [`parse_manifest`]'s reading in `parts` on its own, whatever the text's size: `None` where
/// `parse_manifest` would read the text whole. For checks (the fuzzer compares the two readings).
pub fn parse_manifest_in_parts(text: &str, parts: usize) -> Option<ClusterState> {
    read_list_in_parts(text, parts.max(1))
}

/// Below this, a file is read on one core: splitting it would save little.
const PARTS_FROM_BYTES: usize = 4 << 20;

/// The YAML reader takes ~15 MB/s on one core (a 5,000-node cluster is 250 MB: ~17 s), so a large
/// `List` is cut between its items and the parts read at once, one per core, then put together in
/// order (a later object of the same key replaces an earlier one, as when read whole); the parts
/// are read where they lie, not copied. Only the
/// layout kubectl prints is cut: one document whose `items:` sequence starts at column 0, each item
/// on a line starting `- `; an item's own lines are indented, so no item is cut in two. None, for
/// the caller to read the text whole, when the text is not so laid out, or when any part does not
/// read cleanly (an error, an alias to another part): the whole read says what is wrong, as before.
fn read_list_in_parts(text: &str, parts: usize) -> Option<ClusterState> {
    // One document: no `---` or `...` line.
    if text.starts_with("---")
        || text.starts_with("...")
        || text.contains("\n---")
        || text.contains("\n...")
    {
        return None;
    }
    let items_start = if text.starts_with("items:\n") {
        "items:\n".len()
    } else {
        text.find("\nitems:\n")? + "\nitems:\n".len()
    };
    // The sequence ends at the first line at column 0 that is not an item's start, a comment or
    // blank.
    let mut items_end = text.len();
    let mut at = items_start;
    while at < text.len() {
        let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i + 1);
        let line = &text[at..line_end];
        let item = line.starts_with("- ") || line.trim_end() == "-";
        let other = line.starts_with(' ') || line.starts_with('#') || line.trim().is_empty();
        if !item && !other {
            items_end = at;
            break;
        }
        at = line_end;
    }
    let items = &text[items_start..items_end];
    // Every part starts with an item at column 0, the first one too (a sequence indented under
    // `items:` is not cut: a later line at column 0 would read alone but not after it).
    let first = items
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))?;
    if !(first.starts_with("- ") || first.trim_end() == "-") {
        return None;
    }
    // The List without its items: its kind decides what items without one are.
    let rest = format!(
        "{}{}",
        &text[..items_start - "items:\n".len()],
        &text[items_end..]
    );
    let kind =
        match serde_saphyr::from_multiple_with_options::<Document>(&rest, options(rest.len()))
            .ok()?
            .as_slice()
        {
            [
                Document::Object {
                    fields,
                    items: None,
                },
            ] => fields.get("kind").and_then(Value::as_str)?.to_string(),
            _ => return None,
        };
    if !(kind == "List" || kind.ends_with("List")) {
        return None;
    }
    // Cut points: the start of the first item at or after each share of the bytes.
    let mut cuts = vec![0];
    for share in 1..parts {
        let from = (items.len() * share / parts).max(*cuts.last()?);
        // In bytes: a share of them may end inside a character; `\n- ` never does.
        match items.as_bytes()[from..]
            .windows(3)
            .position(|w| w == b"\n- ")
        {
            Some(i) if from + i + 1 > *cuts.last()? => cuts.push(from + i + 1),
            _ => break,
        }
    }
    cuts.push(items.len());
    let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
    // Each part is itself a YAML document: a sequence of items.
    let read_part = |part: &str| -> Option<ClusterState> {
        let mut documents: Vec<Items> =
            serde_saphyr::from_multiple_with_options(part, options(part.len())).ok()?;
        let (Some(Items::Read(items)), true) = (documents.pop(), documents.is_empty()) else {
            return None;
        };
        let mut state = ClusterState::default();
        for (i, item) in items.into_iter().enumerate() {
            let read = match item {
                Item::Read(read) => read,
                Item::Deferred(object) => read_object(&i.to_string(), &object, item_kind),
            };
            add(&mut state, 1, read).ok()?;
        }
        Some(state)
    };
    let states: Vec<Option<ClusterState>> = std::thread::scope(|scope| {
        let handles: Vec<_> = cuts
            .windows(2)
            .map(|w| {
                let part = &items[w[0]..w[1]];
                scope.spawn(move || read_part(part))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().ok().flatten())
            .collect()
    });
    // In order: a later object of the same key replaces an earlier one.
    let mut state = ClusterState::default();
    for part in states {
        let part = part?;
        state.services.extend(part.services);
        state.endpoint_slices.extend(part.endpoint_slices);
        state.nodes.extend(part.nodes);
    }
    Some(state)
}

/// Reads every document of `text` in one pass (see [`parse_manifest`]).
fn read_whole(text: &str) -> Result<ClusterState, ManifestError> {
    let documents: Vec<Document> =
        serde_saphyr::from_multiple_with_options(text, options(text.len()))
            .map_err(|e| ManifestError::Yaml(e.to_string()))?;
    let mut state = ClusterState::default();
    let mut saw_document = false;
    for (index, document) in documents.into_iter().enumerate() {
        let number = index + 1;
        let (fields, items) = match document {
            Document::Null => continue,
            Document::Other(found) => {
                return Err(ManifestError::Document {
                    document: number,
                    reason: format!("expected a Kubernetes object, found {found}"),
                });
            }
            Document::Object { fields, items } => (fields, items),
        };
        saw_document = true;
        let kind = fields
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if kind == "List" || (kind.ends_with("List") && items.is_some()) {
            let items = match items {
                Some(Items::Read(items)) => items,
                Some(Items::Other("nothing")) | None => continue,
                Some(Items::Other(found)) => {
                    return Err(ManifestError::Document {
                        document: number,
                        reason: format!("`items` must be a list, found {found}"),
                    });
                }
            };
            let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
            for (i, item) in items.into_iter().enumerate() {
                let read = match item {
                    Item::Read(read) => read,
                    Item::Deferred(object) => read_object(&i.to_string(), &object, item_kind),
                };
                add(&mut state, number, read)?;
            }
        } else {
            // Not a List: the document is the object (no kind herald reads has `items`, and the
            // object readers skip fields they do not know).
            add(
                &mut state,
                number,
                read_object("-", &Value::Object(fields), None),
            )?;
        }
    }
    if !saw_document {
        return Err(ManifestError::Empty);
    }
    Ok(state)
}

/// The YAML reader's budget, grown with the input: kubectl's YAML takes 10-12 bytes a node, and a
/// large cluster is far more nodes than serde-saphyr's default of 250,000 (20,000 Services of 10
/// endpoints each: ~90 MB, ~8 million nodes). One node per 8 bytes of input admits that with room
/// while still refusing, early, text denser than any printed object (10 MB of `1,`: 5 million nodes,
/// refused at 1.3 million). Documents, aliases, anchors, merge keys and nesting, which make a little
/// text expand, keep serde-saphyr's limits.
fn options(len: usize) -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = budget.max_nodes.max(len / 8);
    budget.max_events = budget.max_events.max(budget.max_nodes.saturating_mul(4));
    budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(len);
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// An object of a kind herald reads, in the cluster model.
enum Object {
    Service(Service),
    EndpointSlice(EndpointSlice),
    Node(Node),
}

/// Why an object does not read, before the number of its document is known.
struct ObjectError {
    item: String,
    kind: String,
    name: String,
    reason: String,
}

fn add(
    state: &mut ClusterState,
    document: usize,
    read: Result<Option<Object>, ObjectError>,
) -> Result<(), ManifestError> {
    match read {
        Ok(Some(Object::Service(service))) => state.insert_service(service),
        Ok(Some(Object::EndpointSlice(slice))) => state.insert_endpoint_slice(slice),
        Ok(Some(Object::Node(node))) => state.insert_node(node),
        Ok(None) => {}
        Err(ObjectError {
            item,
            kind,
            name,
            reason,
        }) => {
            return Err(ManifestError::Object {
                document,
                item,
                kind,
                name,
                reason,
            });
        }
    }
    Ok(())
}

/// One YAML document, read as it streams by.
enum Document {
    Null,
    /// Not a mapping: what it is instead.
    Other(&'static str),
    /// A mapping: its fields but `items`, and `items` as read.
    Object {
        fields: serde_json::Map<String, Value>,
        items: Option<Items>,
    },
}

/// A document's `items`.
enum Items {
    Read(Vec<Item>),
    /// Not a sequence: what it is instead ("nothing" for null).
    Other(&'static str),
}

/// An element of `items`.
enum Item {
    /// With a kind of its own, read at once (its YAML tree is dropped right after).
    Read(Result<Option<Object>, ObjectError>),
    /// Without one: the List's kind decides, and it is known only after the items (kubectl prints
    /// `items` before `kind`).
    Deferred(Value),
}

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // The same calls the reader makes for a `serde_json::Value`, so documents are told apart
        // exactly as before.
        struct DocumentVisitor;
        impl<'de> Visitor<'de> for DocumentVisitor {
            type Value = Document;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a YAML document")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document, A::Error> {
                let mut fields = serde_json::Map::new();
                let mut items = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key == "items" {
                        items = Some(map.next_value::<Items>()?);
                    } else {
                        let value: Value = map.next_value()?;
                        fields.insert(key, value);
                    }
                }
                Ok(Document::Object { fields, items })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Document, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Document::Other("a list"))
            }
            fn visit_unit<E>(self) -> Result<Document, E> {
                Ok(Document::Null)
            }
            fn visit_none<E>(self) -> Result<Document, E> {
                Ok(Document::Null)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Document, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Document, E> {
                Ok(Document::Other("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Document, E> {
                Ok(Document::Other("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Document, E> {
                Ok(Document::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Document, E> {
                Ok(Document::Other("a number"))
            }
            fn visit_str<E>(self, _: &str) -> Result<Document, E> {
                Ok(Document::Other("a string"))
            }
        }
        deserializer.deserialize_any(DocumentVisitor)
    }
}

impl<'de> Deserialize<'de> for Items {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemsVisitor;
        impl<'de> Visitor<'de> for ItemsVisitor {
            type Value = Items;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list of objects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items, A::Error> {
                let mut items = Vec::new();
                let mut failed = false;
                loop {
                    if failed {
                        // Only the first error is reported: the rest is only checked as YAML.
                        if seq.next_element::<IgnoredAny>()?.is_none() {
                            break;
                        }
                        continue;
                    }
                    let Some(object) = seq.next_element::<Value>()? else {
                        break;
                    };
                    let item = if object.get("kind").is_some_and(Value::is_string) {
                        let read = read_object(&items.len().to_string(), &object, None);
                        failed = read.is_err();
                        Item::Read(read)
                    } else {
                        Item::Deferred(object)
                    };
                    items.push(item);
                }
                Ok(Items::Read(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Items, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Items::Other("an object"))
            }
            fn visit_unit<E>(self) -> Result<Items, E> {
                Ok(Items::Other("nothing"))
            }
            fn visit_none<E>(self) -> Result<Items, E> {
                Ok(Items::Other("nothing"))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Items, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Items, E> {
                Ok(Items::Other("a boolean"))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Items, E> {
                Ok(Items::Other("a number"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Items, E> {
                Ok(Items::Other("a number"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Items, E> {
                Ok(Items::Other("a number"))
            }
            fn visit_str<E>(self, _: &str) -> Result<Items, E> {
                Ok(Items::Other("a string"))
            }
        }
        deserializer.deserialize_any(ItemsVisitor)
    }
}

/// Reads one object (`item`: its place in its List, or "-"); None for kinds herald does not read.
fn read_object(
    item: &str,
    object: &Value,
    implied_kind: Option<&str>,
) -> Result<Option<Object>, ObjectError> {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>")
        .to_string();
    let kind = match object.get("kind").and_then(Value::as_str).or(implied_kind) {
        Some(kind) => kind.to_string(),
        None => {
            return Err(ObjectError {
                item: item.to_string(),
                kind: "<no kind>".to_string(),
                name,
                reason: "an object needs `kind`".to_string(),
            });
        }
    };
    let error = |reason: String| ObjectError {
        item: item.to_string(),
        kind: kind.clone(),
        name: name.clone(),
        reason,
    };
    if !object.is_object() {
        return Err(error(format!(
            "expected an object, found {}",
            json_type(object)
        )));
    }
    if matches!(kind.as_str(), "Service" | "EndpointSlice" | "Node") {
        match object.pointer("/metadata/name") {
            Some(Value::String(name)) if !name.is_empty() => {}
            // Kubernetes names are never empty; an empty one would make a Service or Node that
            // the API server could not hold, keyed by nothing.
            Some(Value::String(_)) => {
                return Err(error("`metadata.name` is empty".to_string()));
            }
            None | Some(Value::Null) => {
                return Err(error("`metadata.name` is missing".to_string()));
            }
            // `name: no` is YAML 1.1's `false`: say so rather than "missing".
            Some(found) => {
                return Err(error(format!(
                    "`metadata.name` must be a string, found {} (quote it)",
                    json_type(found)
                )));
            }
        }
    }
    Ok(match kind.as_str() {
        "Service" => Some(Object::Service(from_service(
            &typed::<core::Service>(object).map_err(error)?,
        ))),
        "EndpointSlice" => Some(Object::EndpointSlice(from_endpoint_slice(
            &typed::<discovery::EndpointSlice>(object).map_err(error)?,
        ))),
        "Node" => Some(Object::Node(from_node(
            &typed::<core::Node>(object).map_err(error)?,
        ))),
        "List" => {
            return Err(error(
                "a List inside a List is not something kubectl prints".to_string(),
            ));
        }
        _ => None,
    })
}

fn typed<T: DeserializeOwned>(object: &Value) -> Result<T, String> {
    // serde quotes a value of the wrong type whole: keep the message about a huge one short.
    T::deserialize(object).map_err(|e| {
        let (e, n) = (e.to_string(), e.to_string().chars().count());
        if n <= 400 {
            e
        } else {
            format!(
                "{}…{}",
                e.chars().take(200).collect::<String>(),
                e.chars().skip(n - 100).collect::<String>()
            )
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, kind: bool) -> String {
        let kind = if kind { "  kind: Service\n" } else { "" };
        format!(
            "- apiVersion: v1\n{kind}  metadata:\n    name: {name}\n    namespace: ns\n  spec:\n    clusterIP: 10.96.0.1\n"
        )
    }

    /// A kubectl-like List of `n` Services (every third without a kind of its own), then `extra`.
    fn list(n: usize, extra: &str) -> String {
        let items: String = (0..n)
            .map(|i| service(&format!("s{i}"), i % 3 != 0))
            .collect();
        format!(
            "apiVersion: v1\nitems:\n{items}{extra}# kubectl prints no comment; a file may\nkind: ServiceList\nmetadata:\n  resourceVersion: \"\"\n"
        )
    }

    #[test]
    fn a_list_read_in_parts_reads_as_the_list_read_whole() {
        // The last item is s5 again: the later one replaces the earlier, which is in another part.
        let yaml = list(60, &service("s5", true).replace("10.96.0.1", "10.96.0.9"));
        let whole = read_whole(&yaml).unwrap();
        assert_eq!(whole.services.len(), 60);
        for parts in [2, 3, 7, 100] {
            let in_parts = read_list_in_parts(&yaml, parts).expect("read in parts");
            assert_eq!(in_parts, whole, "in {parts} parts");
        }
        assert_eq!(parse_manifest(&yaml).unwrap(), whole);
    }

    #[test]
    fn what_does_not_read_in_parts_is_read_whole() {
        let broken = "- kind: Service\n  metadata: {name: late}\n  spec: {ports: [{port: x}]}\n";
        // Not laid out as kubectl prints a List, or a part that does not read alone: None.
        let cases = [
            ("a broken item in the last part", list(30, broken)),
            (
                "an alias to an anchor in another part",
                list(30, "")
                    .replacen(
                        "metadata:\n    name: s1\n",
                        "metadata: &m\n    name: s1\n",
                        1,
                    )
                    .replacen(
                        "  metadata:\n    name: s29\n    namespace: ns\n",
                        "  metadata: *m\n",
                        1,
                    ),
            ),
            (
                "two documents",
                format!("{}---\n{}", list(30, ""), list(2, "")),
            ),
            (
                "a Service with items, not a List",
                format!(
                    "kind: Service\nmetadata: {{name: web, namespace: ns}}\nitems:\n{}",
                    service("a", true)
                ),
            ),
            (
                "items of no kind in a plain List",
                list(30, "").replace("kind: ServiceList", "kind: List"),
            ),
            (
                "a sequence indented under `items:`, then an item at column 0",
                format!(
                    "kind: List\nitems:\n  {}{}",
                    service("a", true).replace("\n  ", "\n    "),
                    service("b", true)
                ),
            ),
        ];
        for (what, yaml) in cases {
            assert!(
                read_list_in_parts(&yaml, 2).is_none(),
                "{what}: read in parts"
            );
            assert_eq!(
                format!("{:?}", parse_manifest(&yaml)),
                format!("{:?}", read_whole(&yaml)),
                "{what}"
            );
        }
        let e = read_whole(&list(30, broken)).unwrap_err().to_string();
        assert!(e.contains("item 30 (Service late)"), "{e}");
    }

    #[test]
    fn items_before_kind_as_kubectl_prints_them() {
        // kubectl sorts keys: `items` comes before `kind`, so an item without a kind of its own
        // waits for the List's.
        let yaml = format!(
            "apiVersion: v1\nitems:\n{}{}kind: ServiceList\nmetadata: {{}}\n",
            service("a", true),
            service("b", false)
        );
        let state = parse_manifest(&yaml).unwrap();
        assert_eq!(
            state
                .services
                .keys()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        // A plain List gives no kind to an item without one.
        let yaml = format!(
            "items:\n{}{}kind: List\n",
            service("a", true),
            service("b", false)
        );
        let e = parse_manifest(&yaml).unwrap_err().to_string();
        assert!(
            e.contains("document 1, item 1") && e.contains("needs `kind`"),
            "{e}"
        );
    }

    #[test]
    fn the_first_broken_object_is_reported() {
        let broken = |name: &str| {
            format!(
                "- kind: Service\n  metadata: {{name: {name}}}\n  spec: {{ports: [{{port: x}}]}}\n"
            )
        };
        let yaml = format!(
            "kind: List\nitems:\n{}{}{}",
            service("a", true),
            broken("b"),
            broken("c")
        );
        let e = parse_manifest(&yaml).unwrap_err().to_string();
        assert!(e.contains("item 1 (Service b)"), "{e}");
        // An item without a kind, earlier, comes first even though it is read last.
        let yaml = format!("kind: List\nitems:\n{}{}", service("a", false), broken("b"));
        let e = parse_manifest(&yaml).unwrap_err().to_string();
        assert!(e.contains("item 0") && e.contains("needs `kind`"), "{e}");
        // A broken YAML text anywhere is reported as such, before any object.
        let yaml = format!("kind: List\nitems:\n{}---\n[", broken("b"));
        assert!(matches!(parse_manifest(&yaml), Err(ManifestError::Yaml(_))));
    }

    #[test]
    fn items_of_an_object_that_is_no_list_are_not_objects() {
        let yaml = format!(
            "kind: Service\nmetadata: {{name: web, namespace: ns}}\nitems:\n{}",
            service("a", true)
        );
        let state = parse_manifest(&yaml).unwrap();
        assert_eq!(
            state
                .services
                .keys()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>(),
            ["web"]
        );
        // A kind ending in List without items is an object of another kind: skipped.
        assert!(
            parse_manifest("kind: PodList\nmetadata: {name: x}\n")
                .unwrap()
                .services
                .is_empty()
        );
        assert!(
            parse_manifest("kind: List\nitems: ~\n")
                .unwrap()
                .services
                .is_empty()
        );
    }
}
