//! The cluster store of the kubeadm stand-in (`tests/fixtures/kubeadm-standin`).
//!
//! Why: kubeadm keeps what joins need in the cluster itself (the kubeadm-config ConfigMap,
//! bootstrap tokens, the kubeadm-certs Secret), and a control-plane join downloads from it. Lab
//! hosts share no files (each agent is chrooted into its own root), so the stand-ins on the
//! hosts reach this store over the lab bridge, at the lab's gateway address: plain HTTP/1.1,
//! `PUT /NAME` keeps a body, `GET /NAME` answers it or 404. It lives in the test's own runtime:
//! no process to clean up, gone with the test (even a failing one).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A running store; dropping it stops the listener.
pub struct KubeStore {
    pub url: String,
    pub data: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KubeStore {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KubeStore {
    /// Listens on `addr` (the lab's gateway), any port.
    pub async fn start(addr: IpAddr) -> KubeStore {
        let listener = TcpListener::bind(SocketAddr::new(addr, 0)).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let data: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let shared = data.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let data = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, data).await;
                });
            }
        });
        KubeStore { url, data, task }
    }

    /// What the stand-ins stored under `name`, as text.
    pub fn get(&self, name: &str) -> Option<String> {
        self.data
            .lock()
            .unwrap()
            .get(name)
            .map(|b| String::from_utf8_lossy(b).to_string())
    }
}

async fn serve(
    conn: tokio::net::TcpStream,
    data: Arc<Mutex<HashMap<String, Vec<u8>>>>,
) -> std::io::Result<()> {
    let mut r = BufReader::new(conn);
    let mut request = String::new();
    r.read_line(&mut request).await?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).await?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let name = path.trim_start_matches('/').to_string();
    let (status, answer) = match method {
        "PUT" => {
            data.lock().unwrap().insert(name, body);
            ("200 OK", Vec::new())
        }
        "GET" => match data.lock().unwrap().get(&name) {
            Some(b) => ("200 OK", b.clone()),
            None => ("404 Not Found", Vec::new()),
        },
        _ => ("405 Method Not Allowed", Vec::new()),
    };
    let mut conn = r.into_inner();
    conn.write_all(
        format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            answer.len()
        )
        .as_bytes(),
    )
    .await?;
    conn.write_all(&answer).await?;
    conn.shutdown().await
}
