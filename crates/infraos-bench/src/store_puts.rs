//! `bench store`: the store alone, without the API: concurrent single-key put transactions
//! (no compare, no ledger entry), as the baseline the API's writes are compared against. On
//! etcd it is etcd's own put rate through the same client InfraOS uses.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use infraos_store::{Store, Txn};

pub struct Options {
    /// `etcd://…` or empty for the embedded store on a temporary data dir.
    pub store: Option<String>,
    pub clients: usize,
    pub puts: usize,
    pub runs: usize,
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("cannot create a temporary data dir")?;
    let store = open(o.store.as_deref(), dir.path()).await?;
    let mut rates = Vec::new();
    for run in 1..=o.runs.max(1) {
        let next = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..o.clients.max(1) {
            let (store, next, puts) = (store.clone(), next.clone(), o.puts);
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= puts {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let key = format!("/bench/r{run}/{i:08}");
                    store.txn(Txn::new().put(key, vec![b'v'; 256])).await?;
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.context("a put task panicked")??;
        }
        let rate = o.puts as f64 / start.elapsed().as_secs_f64().max(1e-9);
        println!("run {run}: {rate:.0} puts/s");
        rates.push(rate);
    }
    println!("puts/s: {:.0}", crate::median(&mut rates));
    Ok(())
}

async fn open(url: Option<&str>, dir: &std::path::Path) -> anyhow::Result<Arc<dyn Store>> {
    match url {
        None | Some("") => {
            let store = infraos_store::embedded::EmbeddedStore::open(
                &dir.join("store.redb"),
                Default::default(),
            )?;
            Ok(Arc::new(store))
        }
        #[cfg(feature = "etcd")]
        Some(url) => {
            let options = infraos_store::etcd::EtcdOptions::parse_url(url)?;
            Ok(Arc::new(
                infraos_store::etcd::EtcdStore::connect(options).await?,
            ))
        }
        #[cfg(not(feature = "etcd"))]
        Some(url) => anyhow::bail!("{url}: this infraos was built without the etcd backend"),
    }
}
