//! `cargo xtask run`: the demo. Builds everything (release, XDP object embedded), starts
//! the demo backends on 127.0.0.1:9001-9003 and the gateway on `conf/demo.toml`.

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use gateway_tests::Backend;

use crate::{cargo, ebpf, root, run_checked, setup};

pub fn run() -> Result<()> {
    setup::setup()?;
    let object = ebpf::build()?;
    run_checked(cargo(&object).args(["build", "--release", "-p", "gateway"]))?;
    let _backends = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            Backend::start_on(&format!("demo-{}", i + 1), addr.parse()?)
                .with_context(|| format!("demo backend on {addr} (is the port free?)"))
        })
        .collect::<Result<Vec<_>>>()?;
    let config = root().join("conf/demo.toml");
    println!(
        r#"
Demo backends: 127.0.0.1:9001, :9002, :9003 (each echoes the request it received as JSON).
Gateway: http://127.0.0.1:8080 on {}. Try:

  curl -s localhost:8080/users/42                       # round robin over demo-1 and demo-2
  curl -s localhost:8080/users/42 -X DELETE             # 404: the users route allows GET and POST
  curl -s localhost:8080/orders/7 -H 'Host: api.example.com' -H 'x-customer: acme'
                                                        # consistent hash: acme always lands on one backend
  curl -s localhost:8080/catalog/items                  # strip_prefix: the backend sees /items
  curl -s localhost:8080/catalog/items -H 'x-api-version: 2'   # rewrite: the backend sees /v2/catalog/items
  curl -si 'localhost:8080/a%2F..%2Fadmin'              # 400: ambiguous encodings are refused
  curl -si localhost:8080/partners/report               # 401: this route needs an API key
  curl -si localhost:8080/partners/report -H 'x-api-key: demo-key'   # 200, RateLimit-* headers
  for i in $(seq 12); do curl -so /dev/null -w '%{{http_code}} ' localhost:8080/partners/x -H 'x-api-key: demo-key'; done
                                                        # the 11th and 12th get 429 (5/s, burst 10)
  curl -s localhost:9901/metrics -H 'Authorization: Bearer demo' | grep gateway_http_requests_total
  GATEWAY_ADMIN_TOKEN=demo target/release/gateway status    # the admin API (token "demo")

Ctrl-C stops the gateway (it drains in-flight requests first).
"#,
        config.display()
    );
    let status = Command::new(root().join("target/release/gateway"))
        .env("GATEWAY_ADMIN_TOKEN", "demo")
        .args(["run", "--config"])
        .arg(&config)
        .status()
        .context("start the gateway")?;
    if !status.success() && status.code().is_some() {
        bail!("the gateway exited with {status}");
    }
    Ok(())
}
