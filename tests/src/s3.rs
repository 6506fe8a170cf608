//! A real S3 API for tests: `moto_server` on 127.0.0.1.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::nats::{free_port, which};

/// Credentials moto accepts (any non-empty pair works; these are fixed for readability).
pub const ACCESS_KEY: &str = "cim-test-key";
pub const SECRET_KEY: &str = "cim-test-secret";
pub const REGION: &str = "us-east-1";

pub struct MotoServer {
    child: Child,
    pub port: u16,
}

impl MotoServer {
    pub async fn start() -> MotoServer {
        let bin = std::env::var("MOTO_SERVER_BIN").ok().map(Into::into).or_else(|| which("moto_server")).unwrap_or_else(|| {
            panic!("moto_server is not on PATH; run `scripts/install-tools` (pip install 'moto[server]')")
        });
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn moto_server");
        let server = MotoServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if Instant::now() > deadline {
                panic!("moto_server did not listen on {port} within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket through the S3 API. object_store cannot create buckets and moto rejects
    /// unsigned requests, so this uses boto3, which `moto[server]` always installs beside it.
    pub async fn create_bucket(&self, bucket: &str) {
        let script = format!(
            "import boto3; boto3.client('s3', endpoint_url='{}', region_name='{REGION}', \
             aws_access_key_id='{ACCESS_KEY}', aws_secret_access_key='{SECRET_KEY}')\
             .create_bucket(Bucket='{bucket}')",
            self.endpoint()
        );
        let status = tokio::process::Command::new("python3")
            .args(["-c", &script])
            .status()
            .await
            .expect("run python3 to create the bucket");
        assert!(status.success(), "creating bucket {bucket} on moto failed");
    }

    /// Keys of the multipart uploads in `bucket` that were neither completed nor aborted: parts
    /// S3 keeps (and bills) though no object shows them. Through boto3, as object_store cannot
    /// list them.
    pub async fn pending_uploads(&self, bucket: &str) -> Vec<String> {
        let script = format!(
            "import boto3; r = boto3.client('s3', endpoint_url='{}', region_name='{REGION}', \
             aws_access_key_id='{ACCESS_KEY}', aws_secret_access_key='{SECRET_KEY}')\
             .list_multipart_uploads(Bucket='{bucket}'); \
             print('\\n'.join(u['Key'] for u in r.get('Uploads', [])))",
            self.endpoint()
        );
        let output = tokio::process::Command::new("python3")
            .args(["-c", &script])
            .output()
            .await
            .expect("run python3 to list multipart uploads");
        assert!(
            output.status.success(),
            "listing multipart uploads of {bucket} on moto failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// An object_store client for `bucket` (for tests that inspect or tamper with objects).
    pub fn store(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .with_bucket_name(bucket)
            .with_region(REGION)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .build()
            .expect("s3 client for moto")
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
