//! The OpenAPI 3 document served at `/openapi/v3`, generated from the same typed schemas the
//! API validates against, so the two cannot drift.

use infraos_api::object::{kinds, object_schema};

pub fn document() -> serde_json::Value {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut schemas = serde_json::Map::new();
    for info in kinds() {
        let schema = object_schema(info, &mut generator);
        schemas.insert(info.kind.to_string(), schema.to_value());
    }
    for (name, schema) in generator.take_definitions(true) {
        schemas.entry(name).or_insert(schema);
    }
    schemas.insert(
        "Status".into(),
        serde_json::json!({
            "type": "object",
            "properties": {
                "kind": {"type": "string"}, "apiVersion": {"type": "string"},
                "status": {"type": "string"}, "message": {"type": "string"},
                "reason": {"type": "string"}, "code": {"type": "integer"},
                "details": {"type": "object", "properties": {
                    "name": {"type": "string"}, "kind": {"type": "string"},
                    "causes": {"type": "array", "items": {"type": "object", "properties": {
                        "field": {"type": "string"}, "message": {"type": "string"}, "reason": {"type": "string"}}}}}}
            }
        }),
    );

    let mut paths = serde_json::Map::new();
    for info in kinds() {
        let base = if info.namespaced {
            format!(
                "/apis/infraos.io/v1/namespaces/{{namespace}}/{}",
                info.plural
            )
        } else {
            format!("/apis/infraos.io/v1/{}", info.plural)
        };
        let reference = serde_json::json!({"$ref": format!("#/components/schemas/{}", info.kind)});
        let ns_param = info
            .namespaced
            .then(|| serde_json::json!({"name": "namespace", "in": "path", "required": true, "schema": {"type": "string"}}));
        let name_param = serde_json::json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}});
        let with_params = |extra: Vec<serde_json::Value>| {
            let mut params: Vec<serde_json::Value> = ns_param.iter().cloned().collect();
            params.extend(extra);
            serde_json::Value::Array(params)
        };
        let ok = |schema: &serde_json::Value| serde_json::json!({"description": "OK", "content": {"application/json": {"schema": schema}}});
        let errors = serde_json::json!({"description": "A Status naming the reason and field", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}});
        let list_schema = serde_json::json!({"type": "object", "properties": {
            "apiVersion": {"type": "string"}, "kind": {"type": "string"},
            "metadata": {"type": "object", "properties": {"resourceVersion": {"type": "string"}, "continue": {"type": "string"}}},
            "items": {"type": "array", "items": reference}}});
        let query = |name: &str, description: &str| serde_json::json!({"name": name, "in": "query", "required": false, "description": description, "schema": {"type": "string"}});
        let mut collection = serde_json::json!({
            "get": {
                "operationId": format!("list{}", info.kind),
                "summary": format!("List or watch {}", info.plural),
                "parameters": with_params(vec![
                    query("labelSelector", "Kubernetes label selector"),
                    query("limit", "page size"),
                    query("continue", "token from the previous page"),
                    query("watch", "stream newline-delimited JSON events"),
                    query("resourceVersion", "watch changes after this revision"),
                    query("allowWatchBookmarks", "send BOOKMARK events"),
                    query("timeoutSeconds", "end the watch after this long"),
                ]),
                "responses": {"200": ok(&list_schema), "400": errors.clone(), "410": errors.clone()}
            }
        });
        let mut item = serde_json::json!({
            "get": {"operationId": format!("read{}", info.kind), "parameters": with_params(vec![name_param.clone()]),
                    "responses": {"200": ok(&reference), "404": errors.clone()}},
        });
        if info.user_writable {
            let body = serde_json::json!({"required": true, "content": {"application/json": {"schema": reference}, "application/yaml": {"schema": reference}}});
            collection["post"] = serde_json::json!({"operationId": format!("create{}", info.kind), "parameters": with_params(vec![]),
                "requestBody": body, "responses": {"201": ok(&reference), "409": errors.clone(), "422": errors.clone()}});
            item["put"] = serde_json::json!({"operationId": format!("replace{}", info.kind), "parameters": with_params(vec![name_param.clone()]),
                "requestBody": body, "responses": {"200": ok(&reference), "409": errors.clone(), "422": errors.clone()}});
            item["patch"] = serde_json::json!({"operationId": format!("patch{}", info.kind), "parameters": with_params(vec![name_param.clone()]),
                "requestBody": {"required": true, "content": {"application/merge-patch+json": {"schema": {"type": "object"}}}},
                "responses": {"200": ok(&reference), "409": errors.clone(), "422": errors.clone()}});
        }
        if info.user_writable || info.kind == "Event" {
            item["delete"] = serde_json::json!({"operationId": format!("delete{}", info.kind), "parameters": with_params(vec![name_param.clone()]),
                "responses": {"200": ok(&reference), "202": ok(&reference), "404": errors.clone(), "409": errors.clone()}});
        }
        paths.insert(base.clone(), collection);
        paths.insert(format!("{base}/{{name}}"), item);
        if info.user_writable {
            paths.insert(
                format!("{base}/{{name}}/status"),
                serde_json::json!({"put": {"operationId": format!("replace{}Status", info.kind), "parameters": with_params(vec![name_param.clone()]),
                    "requestBody": {"required": true, "content": {"application/json": {"schema": reference}}},
                    "responses": {"200": ok(&reference), "409": errors.clone(), "422": errors.clone()}}}),
            );
        }
        if info.kind == "Claim" {
            for action in ["renew", "release"] {
                paths.insert(
                    format!("{base}/{{name}}/{action}"),
                    serde_json::json!({"post": {"operationId": format!("{action}Claim"), "parameters": with_params(vec![name_param.clone()]),
                        "responses": {"200": ok(&reference), "409": errors.clone()}}}),
                );
            }
        }
    }
    paths.insert(
        "/apis/infraos.io/v1/auditrecords".into(),
        serde_json::json!({"get": {"operationId": "listAuditRecords", "parameters": [
            {"name": "from", "in": "query", "schema": {"type": "integer"}},
            {"name": "limit", "in": "query", "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "The audit chain from `from`, oldest first"}}}}),
    );
    paths.insert(
        "/apis/infraos.io/v1/auditrecords/head".into(),
        serde_json::json!({"get": {"operationId": "readAuditHead",
            "responses": {"200": {"description": "The chain's head (seq, hash) signed by the server now"}}}}),
    );
    paths.insert(
        "/apis/infraos.io/v1/signingkey".into(),
        serde_json::json!({"get": {"operationId": "readSigningKey",
            "responses": {"200": {"description": "The server's public signing key, ALGORITHM:BASE64"}}}}),
    );
    serde_json::json!({
        "openapi": "3.0.3",
        "info": {
            "title": "InfraOS API",
            "version": infraos_api::API_VERSION,
            "description": "Uniform resources, claims and allocations under leases, governed by one control plane.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    })
}
