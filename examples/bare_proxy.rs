//! The floor of one HTTP hop, for benchmarks: a reverse proxy that does
//! nothing but relay. Same building blocks as Airlock's allowed-call path
//! (hyper's HTTP/1 server with `TCP_NODELAY`, hyper-util's pooled client,
//! the same runtime and allocator), none of its work (no parse, policy,
//! audit, session or header checks). What a benchmark shows for it, over the
//! direct path, is the cost of the extra hop itself on that machine; what
//! Airlock adds beyond it is Airlock's own.
//!
//! ```text
//! cargo build --release --example bare_proxy
//! bare_proxy UPSTREAM_URL [LISTEN_ADDR]     # e.g. http://127.0.0.1:9000/mcp
//! ```
//!
//! Every request to any path is sent to `UPSTREAM_URL` with its method, body
//! and end-to-end headers; the answer comes back as it came (streamed). The
//! first line on stdout is `listening on http://ADDR`.

use std::convert::Infallible;
use std::io::Write;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HOST, HeaderName, TRANSFER_ENCODING, UPGRADE};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Body = BoxBody<Bytes, hyper::Error>;

/// Hop-by-hop headers (RFC 9110 §7.6.1) are not relayed.
const HOP_BY_HOP: [HeaderName; 4] = [CONNECTION, HOST, TRANSFER_ENCODING, UPGRADE];

async fn relay(
    client: Client<HttpConnector, Incoming>,
    upstream: Uri,
    mut request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    *request.uri_mut() = upstream;
    for name in &HOP_BY_HOP {
        request.headers_mut().remove(name);
    }
    Ok(match client.request(request).await {
        Ok(answer) => answer.map(BodyExt::boxed),
        Err(e) => {
            let mut r = Response::new(
                http_body_util::Full::new(Bytes::from(e.to_string()))
                    .map_err(|never| match never {})
                    .boxed(),
            );
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r
        }
    })
}

async fn serve(upstream: Uri, listen: &str) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let (client, upstream) = (client.clone(), upstream.clone());
        tokio::spawn(async move {
            let service = service_fn(move |r| relay(client.clone(), upstream.clone(), r));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(upstream) = args.first().and_then(|u| u.parse::<Uri>().ok()) else {
        eprintln!("usage: bare_proxy UPSTREAM_URL [LISTEN_ADDR]");
        std::process::exit(2);
    };
    let listen = args.get(1).map_or("127.0.0.1:0", String::as_str);
    tokio::runtime::Runtime::new()?.block_on(serve(upstream, listen))
}
