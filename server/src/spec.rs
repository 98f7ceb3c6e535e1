//! The finishing touches poem-openapi cannot express, applied to the spec it generates, so that
//! a client generated from `/openapi.json` (openapi-python-client, openapi-ts, …) types every
//! answer it can get:
//!
//! * every operation that needs the admin token also declares the admin guard's answers, 401
//!   `invalid_admin_token` and 429 `too_many_attempts` (with `Retry-After`), which the guard
//!   gives before any handler runs;
//! * `/health` says it needs no token (`security: []`);
//! * every operation has an id: the handlers name theirs, except the one serving two methods
//!   (poem-openapi would give both the same id), whose ids are in `UNNAMED`;
//! * the CSV and NDJSON exports are text (`type: string`), not `format: binary` (a generated
//!   Python client then reads them as text instead of failing on them);
//! * `GET /admin/config` answers an object;
//! * a field that refers to another schema does so directly (`$ref`), not through a one-element
//!   `allOf` poem-openapi adds to carry the field's description, which generators turned into a
//!   second, anonymous copy of the schema (`ErrorBodyError` beside `ErrorDetail`);
//! * timestamps in answers are `format: date-time`, and fields with a fixed set of values list
//!   them (`enum`);
//! * one server, `/`: the gateway that serves the spec (poem-openapi wrote an empty list);
//! * a `GET` does not declare 415 (it shares its answers with the `PATCH` of the same key).

use serde_json::{Map, Value, json};

/// Names of the answer fields that hold an RFC 3339 timestamp (in every schema whose name does
/// not end in `Request`).
const TIMESTAMPS: [&str; 10] = [
    "last_failure_at",
    "created_at",
    "updated_at",
    "expires_at",
    "last_used_at",
    "timestamp",
    "since",
    "until",
    "ts",
    "start",
];

/// Operation ids of the operations whose handler serves two methods: path, method, id.
const UNNAMED: &[(&str, &str, &str)] = &[
    ("/admin/keys/{id}", "patch", "update_key"),
    ("/admin/keys/{id}", "put", "update_key_put"),
];

/// `AuditEntry.outcome`: every [`Outcome`](fastgate_layer::audit::Outcome).
const OUTCOMES: [&str; 6] = [
    "completed",
    "client_aborted",
    "upstream_error",
    "upstream_timeout",
    "rejected",
    "interrupted",
];

/// The spec poem-openapi generated, finished (see the module docs).
pub fn finish(generated: &str) -> String {
    let Ok(mut spec) = serde_json::from_str::<Value>(generated) else {
        return generated.to_owned();
    };
    if let Some(root) = spec.as_object_mut()
        && root
            .get("servers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty)
    {
        root.insert(
            "servers".into(),
            json!([{"url": "/", "description": "the gateway serving this spec"}]),
        );
    }
    if let Some(paths) = spec.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in item.iter_mut() {
                if !op.is_object() {
                    continue;
                }
                if op.get("operationId").is_none()
                    && let Some((_, _, id)) =
                        UNNAMED.iter().find(|(p, m, _)| p == path && m == method)
                {
                    op["operationId"] = json!(id);
                }
                if path == "/health" {
                    op["security"] = json!([]);
                }
                let secured = op
                    .get("security")
                    .and_then(Value::as_array)
                    .is_some_and(|s| !s.is_empty());
                if secured {
                    guard_answers(op);
                }
                if method == "get"
                    && let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut)
                {
                    responses.remove("415");
                }
                if path == "/admin/logs/export" {
                    text_exports(op);
                }
                if path == "/admin/keys/{id}/rotate" && method == "post" {
                    op["requestBody"] = json!({
                        "description": "Optional, as the `grace_seconds` query parameter (both given: the same value).",
                        "required": false,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RotateKeyRequest"}}}
                    });
                }
                if path == "/admin/config"
                    && let Some(schema) = op.pointer_mut(
                        "/responses/200/content/application~1json; charset=utf-8/schema",
                    )
                {
                    *schema = json!({"type": "object", "additionalProperties": true});
                }
            }
        }
    }
    if let Some(schemas) = spec
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for (name, schema) in schemas.iter_mut() {
            let answer = !name.ends_with("Request");
            if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
                for (field, prop) in props.iter_mut() {
                    direct_ref(prop);
                    if answer
                        && TIMESTAMPS.contains(&field.as_str())
                        && prop.get("type") == Some(&json!("string"))
                    {
                        prop["format"] = json!("date-time");
                    }
                }
            }
        }
        schemas.insert(
            "RotateKeyRequest".into(),
            json!({
                "type": "object",
                "title": "RotateKeyRequest",
                "description": "Optional body of a rotation; an unknown field is a 400.",
                "additionalProperties": false,
                "properties": {"grace_seconds": {
                    "type": "integer", "format": "uint64", "minimum": 0, "maximum": 2_592_000,
                    "description": "Seconds the old secret keeps working (default 0: it stops at once)."
                }}
            }),
        );
        set(schemas, "AuditEntry", "outcome", "enum", json!(OUTCOMES));
        for keys in ["KeyInfo", "CreatedKey"] {
            set(
                schemas,
                keys,
                "status",
                "enum",
                json!(["active", "disabled", "expired"]),
            );
        }
        set(
            schemas,
            "Health",
            "status",
            "enum",
            json!(["healthy", "degraded"]),
        );
        set(
            schemas,
            "Health",
            "reasons",
            "items",
            json!({"type": "string", "enum": crate::api::HEALTH_REASONS}),
        );
        set(
            schemas,
            "AuditHealth",
            "spool",
            "enum",
            json!(crate::api::SPOOL_STATES),
        );
        set(
            schemas,
            "PeriodReport",
            "period",
            "enum",
            json!(["hour", "day"]),
        );
        set(
            schemas,
            "DatabaseHealth",
            "backend",
            "enum",
            json!(["sqlite", "postgres"]),
        );
    }
    spec.to_string()
}

/// The admin guard's 401 and 429, which come before any handler runs.
fn guard_answers(op: &mut Value) {
    let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    let error = json!({"application/json; charset=utf-8": {
        "schema": {"$ref": "#/components/schemas/ErrorBody"},
    }});
    responses.entry("401").or_insert_with(|| {
        json!({
            "description": "The admin token is missing or wrong (`invalid_admin_token`).",
            "content": error,
        })
    });
    responses.entry("429").or_insert_with(|| {
        json!({
            "description": "Too many wrong admin tokens from this address (`too_many_attempts`): \
                            try again after `Retry-After` seconds.",
            "headers": {"Retry-After": {
                "description": "Seconds until this address may try again.",
                "required": true,
                "schema": {"type": "integer", "format": "int32"},
            }},
            "content": error,
        })
    });
}

/// CSV and NDJSON are text.
fn text_exports(op: &mut Value) {
    let Some(content) = op
        .pointer_mut("/responses/200/content")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for (media, body) in content.iter_mut() {
        if media.starts_with("text/csv") || media.starts_with("application/x-ndjson") {
            body["schema"] = json!({"type": "string"});
        }
    }
}

/// `{"allOf": [{"$ref": r}, {"description": …}], "description": …}` → `{"$ref": r}`.
fn direct_ref(prop: &mut Value) {
    let Some(obj) = prop.as_object() else {
        return;
    };
    if !obj.keys().all(|k| k == "allOf" || k == "description") {
        return;
    }
    let Some(parts) = obj.get("allOf").and_then(Value::as_array) else {
        return;
    };
    let mut refs = parts.iter().filter(|p| p.get("$ref").is_some());
    let (Some(only), None) = (refs.next(), refs.next()) else {
        return;
    };
    let described_only = |p: &Value| {
        p.as_object()
            .is_some_and(|o| o.keys().all(|k| k == "description"))
    };
    if parts
        .iter()
        .all(|p| p.get("$ref").is_some() || described_only(p))
    {
        *prop = only.clone();
    }
}

/// Set `key` of the property `field` of the schema `schema`, if both exist.
fn set(schemas: &mut Map<String, Value>, schema: &str, field: &str, key: &str, value: Value) {
    if let Some(prop) = schemas
        .get_mut(schema)
        .and_then(|s| s.get_mut("properties"))
        .and_then(|p| p.get_mut(field))
        .and_then(Value::as_object_mut)
    {
        prop.insert(key.to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use fastgate_layer::audit::Outcome;

    use super::*;

    #[test]
    fn the_outcome_enum_is_every_outcome() {
        for name in OUTCOMES {
            assert!(Outcome::parse(name).is_some(), "{name}");
        }
        for outcome in [
            Outcome::Completed,
            Outcome::ClientAborted,
            Outcome::UpstreamError,
            Outcome::UpstreamTimeout,
            Outcome::Rejected,
            Outcome::Interrupted,
        ] {
            assert!(OUTCOMES.contains(&outcome.as_str()), "{}", outcome.as_str());
        }
    }

    #[test]
    fn a_described_reference_becomes_a_plain_one() {
        let x = json!({"$ref": "#/components/schemas/X"});
        let mut prop = json!({"allOf": [x, {"description": "d"}], "description": "d"});
        direct_ref(&mut prop);
        assert_eq!(prop, x);
        let mut prop = json!({"allOf": [x], "description": "d"});
        direct_ref(&mut prop);
        assert_eq!(prop, x);
        let mut two = json!({"allOf": [{"$ref": "#/a"}, {"$ref": "#/b"}]});
        let before = two.clone();
        direct_ref(&mut two);
        assert_eq!(two, before);
    }
}
