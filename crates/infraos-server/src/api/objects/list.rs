//! Reads: one object, and lists in pages assembled from the stored bytes (a watch is
//! handed to `api/watch.rs`).

use super::*;

pub(super) async fn get_one(
    state: &AppState,
    info: &KindInfo,
    ns: Option<&str>,
    name: &str,
) -> Result<Response, ApiError> {
    let key = objects::key(info, ns, name);
    let kv = state
        .store
        .get(&key)
        .await?
        .ok_or_else(|| ApiError::not_found(info.kind, name))?;
    Ok(json_bytes(objects::with_revision(
        &kv.value,
        kv.mod_revision,
    )))
}

const PAGE: usize = 500;

pub(super) async fn list_or_watch(
    state: AppState,
    info: &'static KindInfo,
    ns: Option<String>,
    params: ListParams,
    filter: Option<ListFilter>,
) -> Result<Response, ApiError> {
    if params.is_watch() {
        return crate::api::watch::watch(state, info, ns, params, filter).await;
    }
    let selector = params.selector()?;
    // The store serves the newest state, which satisfies any revision up to it ("not older
    // than", as Kubernetes); a later one has never existed.
    let not_older_than = params.resource_version()?;
    let limit = match params.limit.as_deref() {
        None | Some("") | Some("0") => None,
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("limit: {v:?} is not a number")))?,
        ),
    };
    let prefix = objects::prefix(info, ns.as_deref());
    let mut after = match params.continue_token.as_deref() {
        None | Some("") => None,
        Some(token) => Some(decode_continue(token, &prefix)?),
    };
    let mut items: Vec<bytes::Bytes> = Vec::new();
    let mut revision = None;
    let mut next = None;
    loop {
        let want = limit.map_or(PAGE, |l| (l - items.len()).clamp(1, PAGE));
        let page = state.store.range(&prefix, after.as_deref(), want).await?;
        if revision.is_none()
            && let Some(rv) = not_older_than
        {
            crate::api::watch::check_not_future(rv, page.revision)?;
        }
        revision.get_or_insert(page.revision);
        for kv in &page.kvs {
            let keep = filter.as_ref().is_none_or(|f| f.admits(kv))
                && match &selector {
                    None => true,
                    Some(_) => selector_matches(selector.as_ref(), &decode_stored(kv)?.value),
                };
            if keep {
                items.push(objects::with_revision(&kv.value, kv.mod_revision));
            }
            after = Some(kv.key.clone());
            if limit.is_some_and(|l| items.len() >= l) {
                break;
            }
        }
        let full = limit.is_some_and(|l| items.len() >= l);
        if full {
            // Whether anything follows decides if a continue token is given.
            let probe = state.store.range(&prefix, after.as_deref(), 1).await?;
            if !probe.kvs.is_empty() {
                next = after.clone();
            }
            break;
        }
        if !page.more {
            break;
        }
    }
    let mut metadata = serde_json::json!({"resourceVersion": revision.unwrap_or(0).to_string()});
    if let Some(key) = next {
        metadata["continue"] = encode_continue(&key).into();
    }
    // Assembled from the stored bytes: a list of 10,000 objects is never parsed.
    let head = serde_json::json!({
        "apiVersion": infraos_api::API_VERSION,
        "kind": format!("{}List", info.kind),
        "metadata": metadata,
    });
    let mut body = serde_json::to_vec(&head).unwrap_or_default();
    body.pop();
    body.extend_from_slice(b",\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    Ok(json_bytes(body.into()))
}

fn encode_continue(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.as_bytes())
}

fn decode_continue(token: &str, prefix: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request("continue: the token is not valid for this list");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let key = String::from_utf8(bytes).map_err(|_| bad())?;
    if !key.starts_with(prefix) {
        return Err(bad());
    }
    Ok(key)
}
