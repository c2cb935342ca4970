//! Objects every cluster starts with: the `compute` and `gpu` ResourceClasses that agents
//! publish their nodes' resources in. Created when absent; an administrator's edits stay.

use infraos_api::Kind as _;
use infraos_api::TypedObject;
use infraos_api::kinds::ResourceClassSpec;
use infraos_store::{Compare, Txn};

use crate::ServerError;
use crate::audit::{self, Actor, Record};
use crate::objects;
use crate::state::AppState;

pub const BUILTIN_CLASSES: &str = r#"
apiVersion: infraos.io/v1
kind: ResourceClass
metadata:
  name: compute
spec:
  kind: counted
  description: CPU and memory of a machine
  dimensions:
    - name: cpu
      unit: cores
    - name: memory
      unit: bytes
---
apiVersion: infraos.io/v1
kind: ResourceClass
metadata:
  name: gpu
spec:
  kind: items
  description: Whole GPUs
  attributes:
    model: string
    memoryGiB: int
    numaNode: int
    uuid: string
"#;

pub async fn ensure_builtin_classes(state: &AppState) -> Result<(), ServerError> {
    let docs = infraos_api::object::parse_documents(BUILTIN_CLASSES)
        .map_err(|e| ServerError::Cert(format!("built-in classes: {e}")))?;
    for doc in docs {
        let object = TypedObject::decode(ResourceClassSpec::INFO, &doc)
            .map_err(|e| ServerError::Cert(format!("built-in classes: {e}")))?;
        let name = object.meta().name.clone();
        let key = objects::key(ResourceClassSpec::INFO, None, &name);
        if state.store.get(&key).await?.is_some() {
            continue;
        }
        let mut object = object;
        let now = state.clock.now();
        {
            let meta = object.meta_mut();
            meta.uid = uuid::Uuid::new_v4().to_string();
            meta.creation_timestamp = Some(now);
            meta.generation = 1;
        }
        let bytes = object.to_vec();
        let payload = Record {
            actor: &Actor::system("bootstrap"),
            verb: "create",
            object: audit::object_ref("ResourceClass", None, &name),
            code: 201,
            reason: None,
            before: None,
            after: Some(&bytes),
            node: None,
        }
        .payload(now);
        state
            .store
            .txn(
                Txn::new()
                    .when(Compare::absent(key.clone()))
                    .put(key, bytes)
                    .append(payload),
            )
            .await?;
    }
    Ok(())
}
