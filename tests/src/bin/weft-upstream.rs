//! `weft-upstream [ADDRESS] [NAME]`: the harness's HTTP upstream as a standalone server, for
//! `make demo` and benchmarks. Answers every request with `upstream NAME: METHOD PATH`.
//! Defaults: `127.0.0.1:8080`, `app`. Runs until killed.

use anyhow::Context;
use weft_e2e::upstream::HttpUpstream;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let name = args.next().unwrap_or_else(|| "app".to_owned());
    let address = address
        .parse()
        .with_context(|| format!("{address:?} is not an address like 127.0.0.1:8080"))?;
    let upstream = HttpUpstream::start_for_load(&name, address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    println!(
        "weft-upstream {} listening on {}",
        upstream.name(),
        upstream.addr()
    );
    std::future::pending::<()>().await;
    Ok(())
}
