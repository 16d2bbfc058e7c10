//! The builder of the OpenAPI document: each resource's `describe` names its operations'
//! request and response types through [`Api`], and what every operation shares (the error body
//! and its codes, the bearer token, the request ids, the write limit, `Idempotency-Key`, the
//! request timeout and the body limit) is added here once.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use crate::api::idempotency::MAX_KEY_LEN;
use crate::api::json::MAX_BODY_BYTES;
use crate::auth::Role;
use crate::domain::Topic;
use crate::error::ErrorBody;

/// The prefix of the versioned API.
const V1: &str = "/api/v1";

/// The operations on one order, which an answer carrying an order links to.
const ORDER_OPERATIONS: &[&str] = &[
    "getOrder",
    "updateOrder",
    "changeOrderStatus",
    "confirmOrder",
    "cancelOrder",
    "overrideStock",
    "linkOrderToChat",
];

/// The operations being described, and the schemas of the types they name.
pub struct Api {
    /// Request bodies: what the handlers accept (serde's deserialize side).
    requests: SchemaGenerator,
    /// Answers: what the handlers write (serde's serialize side).
    responses: SchemaGenerator,
    paths: BTreeMap<String, Map<String, Value>>,
}

impl Api {
    pub(super) fn new() -> Api {
        let settings = SchemaSettings::draft2020_12().with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        });
        Api {
            requests: settings.clone().for_deserialize().into_generator(),
            responses: settings.for_serialize().into_generator(),
            paths: BTreeMap::new(),
        }
    }

    /// A `GET` operation at `path` (the full path, `{name}` for path parameters).
    pub fn get(&mut self, path: &'static str, id: &str, summary: &str) -> Operation<'_> {
        self.operation("get", path, id, summary)
    }

    /// A `POST` operation.
    pub fn post(&mut self, path: &'static str, id: &str, summary: &str) -> Operation<'_> {
        self.operation("post", path, id, summary)
    }

    /// A `PUT` operation.
    pub fn put(&mut self, path: &'static str, id: &str, summary: &str) -> Operation<'_> {
        self.operation("put", path, id, summary)
    }

    /// A `PATCH` operation.
    pub fn patch(&mut self, path: &'static str, id: &str, summary: &str) -> Operation<'_> {
        self.operation("patch", path, id, summary)
    }

    fn operation(
        &mut self,
        method: &'static str,
        path: &'static str,
        id: &str,
        summary: &str,
    ) -> Operation<'_> {
        let tag = path
            .strip_prefix(V1)
            .and_then(|rest| rest.trim_start_matches('/').split('/').next())
            .filter(|t| !t.is_empty() && !t.contains('.'))
            .unwrap_or("service");
        let mut op = Map::new();
        op.insert("operationId".into(), id.into());
        op.insert("summary".into(), summary.into());
        op.insert("tags".into(), json!([tag]));
        Operation {
            api: self,
            method,
            path,
            op,
            description: Vec::new(),
            params: vec![
                json!({ "$ref": "#/components/parameters/CorrelationId" }),
                json!({ "$ref": "#/components/parameters/RequestId" }),
            ],
            answers: BTreeMap::new(),
        }
    }

    pub(super) fn finish(mut self) -> Value {
        self.responses.subschema_for::<ErrorBody>();
        let mut schemas = self.requests.take_definitions(true);
        for (name, schema) in self.responses.take_definitions(true) {
            if let Some(known) = schemas.get(&name) {
                // One name, one schema: a type read and written differently needs two types.
                assert_eq!(
                    known, &schema,
                    "{name} is read and written with different schemas"
                );
            }
            schemas.insert(name, schema);
        }
        let id_header = |what: &str| {
            json!({
                "description": what,
                "schema": { "type": "string", "format": "uuid" },
            })
        };
        json!({
            "openapi": "3.1.0",
            "info": {
                "title": "order-service",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "Orders over HTTP: each change is committed to SQLite with its events, \
                    which a relay publishes to NATS JetStream. Every error answers the ErrorBody \
                    shape; each answer lists the codes it may carry.",
            },
            "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
            "paths": self.paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {
                    "bearer": {
                        "type": "http",
                        "scheme": "bearer",
                        "bearerFormat": "JWT",
                        "description": "An HS256 token whose `role` claim is admin, system, customer or ai \
                            (`order-service token --role admin`).",
                    },
                },
                "parameters": {
                    "CorrelationId": {
                        "name": "X-Correlation-ID",
                        "in": "header",
                        "required": false,
                        "description": "Links related events across services; new when absent. \
                            Must be a UUID (else 400 invalid_correlation_id).",
                        "schema": { "type": "string", "format": "uuid" },
                    },
                    "RequestId": {
                        "name": "X-Request-ID",
                        "in": "header",
                        "required": false,
                        "description": "This request, the causation of its first event; a value that is \
                            not a UUID is replaced by a new one.",
                        "schema": { "type": "string" },
                    },
                    "IdempotencyKey": {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": false,
                        "description": format!(
                            "A retry with the same key and body gets the first answer again, with \
                            `Idempotent-Replayed: true`, and writes nothing. Scoped to the caller, method \
                            and path. 1 to {MAX_KEY_LEN} visible ASCII characters, bare or quoted."
                        ),
                        "schema": {
                            "type": "string",
                            "pattern": format!(
                                "^([!#-~]{{1,{MAX_KEY_LEN}}}|\"[!#-~]{{1,{MAX_KEY_LEN}}}\")$"
                            ),
                        },
                    },
                },
                "headers": {
                    "CorrelationId": id_header("The request's correlation id, as sent or new."),
                    "RequestId": id_header("The request's id, as sent or new."),
                    "Replayed": {
                        "description": "`true` when this is the stored answer to an earlier request \
                            with the same Idempotency-Key.",
                        "schema": { "type": "string", "enum": ["true"] },
                    },
                    "RetryAfter": {
                        "description": "Seconds until the caller may write again.",
                        "schema": { "type": "integer", "minimum": 1 },
                    },
                    "Location": {
                        "description": "Where the new resource is read.",
                        "schema": { "type": "string" },
                    },
                },
            },
        })
    }
}

/// One operation being described; [`Operation::add`] puts it into the document.
#[must_use = "an operation is in the document only once `add` is called"]
pub struct Operation<'a> {
    api: &'a mut Api,
    method: &'static str,
    path: &'static str,
    op: Map<String, Value>,
    description: Vec<String>,
    params: Vec<Value>,
    answers: BTreeMap<u16, Answer>,
}

/// One status of an operation: a body of its own, or the error body with these codes.
#[derive(Default)]
struct Answer {
    description: String,
    content: Option<(String, Value)>,
    codes: BTreeSet<&'static str>,
    headers: Map<String, Value>,
    links: Map<String, Value>,
}

impl Operation<'_> {
    /// A paragraph of the operation's description.
    pub fn description(mut self, text: &str) -> Self {
        self.description.push(text.to_owned());
        self
    }

    /// Needs a bearer token of one of these roles: 401 without one, 403 with another role.
    pub fn roles(mut self, roles: &[Role]) -> Self {
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        self.description
            .push(format!("Roles: {}.", names.join(", ")));
        self.op.insert("security".into(), json!([{ "bearer": [] }]));
        self.answers.entry(401).or_default().headers.insert(
            "WWW-Authenticate".into(),
            json!({ "schema": { "type": "string", "enum": ["Bearer"] } }),
        );
        self.error(401, &["unauthorized"])
            .error(403, &["forbidden"])
    }

    /// A UUID in the path: 400 when it is not one.
    pub fn path_uuid(self, name: &str, what: &str) -> Self {
        self.path_param(name, what, json!({ "type": "string", "format": "uuid" }))
            .error(400, &["invalid_id", "invalid_path"])
    }

    /// The order `{id}` in the path: 404 when there is no such order or the caller may not see
    /// it (the two are answered alike).
    pub fn order_path(self) -> Self {
        self.path_uuid("id", "The order id.")
            .error(404, &["not_found"])
    }

    /// A path parameter with its schema; its refusals are the operation's to add.
    pub fn path_param(mut self, name: &str, what: &str, schema: Value) -> Self {
        self.params.push(json!({
            "name": name,
            "in": "path",
            "required": true,
            "description": what,
            "schema": schema,
        }));
        self
    }

    /// The query string is `T`'s fields; one that does not parse is 400 `invalid_query`.
    pub fn query<T: JsonSchema>(mut self) -> Self {
        let schema = SchemaSettings::draft2020_12()
            .with(|s| s.inline_subschemas = true)
            .into_generator()
            .into_root_schema_for::<T>();
        let schema = Value::from(schema);
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(properties) = schema["properties"].as_object() {
            for (name, property) in properties {
                let mut property = property.clone();
                let description = property
                    .as_object_mut()
                    .and_then(|p| p.remove("description"));
                self.params.push(json!({
                    "name": name,
                    "in": "query",
                    "required": required.contains(&name.as_str()),
                    "description": description,
                    "schema": not_null(property),
                }));
            }
        }
        self.error(400, &["invalid_query"])
    }

    /// A JSON body of type `T`, required: refused with 400 when it is not JSON, 413 when too
    /// large, 415 when not sent as JSON, and 422 when its content does not fit `T`.
    pub fn body<T: JsonSchema>(mut self) -> Self {
        let schema = Value::from(self.api.requests.subschema_for::<T>());
        self.op.insert(
            "requestBody".into(),
            json!({ "required": true, "content": { "application/json": { "schema": schema } } }),
        );
        self.error(400, &["malformed_json", "unreadable_body"])
            .error(413, &["payload_too_large"])
            .error(415, &["unsupported_media_type"])
            .error(422, &["invalid_field", "unknown_field", "read_only_field"])
    }

    /// A JSON answer of type `T` with this status.
    pub fn json<T: JsonSchema>(self, status: u16, what: &str) -> Self {
        let schema = Value::from(self.api.responses.subschema_for::<T>());
        self.answer(status, what, "application/json", schema)
    }

    /// 201 with a `T` and the `Location` to read it from.
    pub fn created<T: JsonSchema>(mut self, what: &str) -> Self {
        self = self.json::<T>(201, what);
        let answer = self.answers.entry(201).or_default();
        answer.headers.insert(
            "Location".into(),
            json!({ "$ref": "#/components/headers/Location" }),
        );
        self
    }

    /// The order in the answer with this status can be taken further by the operations on one
    /// order (OpenAPI links: their `{id}` is the answer's `order_id`).
    pub fn order_links(mut self, status: u16) -> Self {
        let answer = self.answers.entry(status).or_default();
        for id in ORDER_OPERATIONS {
            answer.links.insert(
                (*id).to_owned(),
                json!({ "operationId": id, "parameters": { "id": "$response.body#/order_id" } }),
            );
        }
        self
    }

    /// An answer with this status, media type and schema.
    pub fn answer(mut self, status: u16, what: &str, media: &str, schema: Value) -> Self {
        let answer = self.answers.entry(status).or_default();
        answer.description = what.to_owned();
        answer.content = Some((media.to_owned(), schema));
        self
    }

    /// The error body with this status may carry these codes.
    pub fn error(mut self, status: u16, codes: &[&'static str]) -> Self {
        self.answers
            .entry(status)
            .or_default()
            .codes
            .extend(codes.iter().copied());
        self
    }

    /// Puts the operation into the document, with what every operation of its kind shares.
    pub fn add(mut self) {
        self = self
            .error(400, &["invalid_correlation_id"])
            .error(408, &["request_timeout"]);
        let versioned = self.path.starts_with(V1);
        if versioned && self.method != "get" {
            self = self.error(429, &["too_many_requests"]);
            self.answers.entry(429).or_default().headers.insert(
                "Retry-After".into(),
                json!({ "$ref": "#/components/headers/RetryAfter" }),
            );
        }
        if versioned && self.method == "post" {
            self.params
                .push(json!({ "$ref": "#/components/parameters/IdempotencyKey" }));
            self = self
                .error(400, &["invalid_idempotency_key"])
                .error(409, &["idempotency_key_in_use"])
                .error(413, &["payload_too_large"])
                .error(422, &["idempotency_key_reused"]);
            for (_, answer) in self.answers.range_mut(200..300) {
                answer.headers.insert(
                    "Idempotent-Replayed".into(),
                    json!({ "$ref": "#/components/headers/Replayed" }),
                );
            }
        }
        let mut responses = Map::new();
        for (status, answer) in std::mem::take(&mut self.answers) {
            responses.insert(status.to_string(), answer.into_json(status));
        }
        if !self.description.is_empty() {
            self.op
                .insert("description".into(), self.description.join("\n\n").into());
        }
        self.op.insert("parameters".into(), self.params.into());
        self.op.insert("responses".into(), responses.into());
        self.api
            .paths
            .entry(self.path.to_owned())
            .or_default()
            .insert(self.method.to_owned(), self.op.into());
    }
}

impl Answer {
    fn into_json(mut self, status: u16) -> Value {
        self.headers.insert(
            "X-Correlation-ID".into(),
            json!({ "$ref": "#/components/headers/CorrelationId" }),
        );
        self.headers.insert(
            "X-Request-ID".into(),
            json!({ "$ref": "#/components/headers/RequestId" }),
        );
        let (description, content) = match self.content {
            Some((media, schema)) => (self.description, json!({ media: { "schema": schema } })),
            None => {
                let codes: Vec<&str> = self.codes.iter().copied().collect();
                let schema = json!({
                    "allOf": [{ "$ref": "#/components/schemas/ErrorBody" }],
                    "properties": { "error": { "enum": codes } },
                });
                let description = format!("{} Codes: {}.", refusal(status), codes.join(", "));
                (
                    description,
                    json!({ "application/json": { "schema": schema } }),
                )
            }
        };
        let mut answer =
            json!({ "description": description, "headers": self.headers, "content": content });
        if !self.links.is_empty() {
            answer["links"] = self.links.into();
        }
        answer
    }
}

/// The schema of a topic name: one of the ten.
pub fn topic_schema(_: &mut SchemaGenerator) -> schemars::Schema {
    let names: Vec<&str> = Topic::ALL.iter().map(|t| t.as_str()).collect();
    schemars::json_schema!({ "type": "string", "enum": names })
}

/// The schema of a topic name or null.
pub fn nullable_topic_schema(generator: &mut SchemaGenerator) -> schemars::Schema {
    let mut schema = topic_schema(generator);
    schema.insert("type".into(), json!(["string", "null"]));
    if let Some(Value::Array(names)) = schema.get_mut("enum") {
        names.push(Value::Null);
    }
    schema
}

/// The schema of a consumer group's name.
pub fn group_schema(_: &mut SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$" })
}

/// What an error status means in this API.
fn refusal(status: u16) -> String {
    match status {
        400 => "The request cannot be read: a bad header, path, query or JSON.".into(),
        401 => "No valid bearer token.".into(),
        403 => "The token's role may not do this.".into(),
        404 => "No such resource, or not one the caller may see.".into(),
        408 => {
            "The request took longer than REQUEST_TIMEOUT; what it did not finish was not applied."
                .into()
        }
        409 => "The request conflicts with the resource's current state.".into(),
        413 => format!("The body is larger than {MAX_BODY_BYTES} bytes."),
        415 => "The body was not sent as Content-Type: application/json.".into(),
        422 => "Well-formed JSON whose content is not acceptable; `details.field` names the field."
            .into(),
        429 => {
            "Over the caller's write limit (WRITE_RATE_LIMIT); Retry-After says when to try again."
                .into()
        }
        503 => "A component the request needs cannot be reached now.".into(),
        _ => "An error.".into(),
    }
}

/// A query parameter's schema: absent is how a query says "none", so `null` is not a value.
fn not_null(mut schema: Value) -> Value {
    if let Some(object) = schema.as_object_mut()
        && object.get("default") == Some(&Value::Null)
    {
        object.remove("default");
    }
    if let Some(types) = schema["type"].as_array() {
        let rest: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        schema["type"] = match rest.as_slice() {
            [one] => one.clone(),
            _ => rest.into(),
        };
    }
    if let Some(any_of) = schema.get("anyOf").and_then(Value::as_array) {
        let rest: Vec<Value> = any_of
            .iter()
            .filter(|s| s["type"] != "null")
            .cloned()
            .collect();
        if let [one] = rest.as_slice() {
            return one.clone();
        }
    }
    schema
}
