//! `infraos version`: this binary's version and, if reachable, the server's.

use std::path::Path;

pub async fn run(config: Option<&Path>) -> anyhow::Result<()> {
    println!(
        "client: infraos {} ({})",
        env!("CARGO_PKG_VERSION"),
        infraos_api::API_VERSION
    );
    match super::client(config) {
        Ok(client) => match client.get_path("/version").await {
            Ok(v) => println!(
                "server: infraos {} at {}",
                v.get("version").and_then(|v| v.as_str()).unwrap_or("?"),
                client.base_url()
            ),
            Err(e) => println!("server: unreachable ({e})"),
        },
        Err(e) => println!("server: not configured ({e})"),
    }
    Ok(())
}
