"""A real S3-compatible server on loopback: MinIO, single node, single drive.

MinIO publishes no tagged Go module versions and its community repository stopped taking changes
in February 2026, so it is pinned to its last commit's pseudo-version. It builds from the module
proxy in about two minutes cold (tests/cluster/README.md); versity's versitygw (v1.8.0, under a
minute) was measured as the fallback should MinIO's module ever stop building.
"""

from __future__ import annotations

import secrets
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import binaries
from .process import Service, free_port, wait_for

REGION = "us-east-1"


@dataclass
class S3Server:
    state: Path
    tie_to_parent: bool = True
    access_key: str = field(default_factory=lambda: "ak" + secrets.token_hex(8))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30))
    region: str = REGION
    port: int = 0
    service: Service | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.state / "s3" / "data"

    def start(self) -> S3Server:
        minio = binaries.find("minio")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = {
            "MINIO_ROOT_USER": self.access_key, "MINIO_ROOT_PASSWORD": self.secret_key,
            "MINIO_REGION": self.region, "MINIO_BROWSER": "off", "MINIO_UPDATE": "off",
            "HOME": str(self.state / "s3"), "PATH": "/usr/bin:/bin",
        }
        self.service = Service("s3", [
            str(minio), "server", str(self.data_dir), f"--address=127.0.0.1:{self.port}",
            f"--console-address=127.0.0.1:{free_port()}", "--quiet",
        ], self.state, env=env, tie_to_parent=self.tie_to_parent).start()
        try:
            wait_for(lambda: urllib.request.urlopen(
                f"{self.endpoint}/minio/health/ready", timeout=2).status == 200,
                60, "MinIO /minio/health/ready", self.service)
            wait_for(lambda: self.client().list_buckets() is not None, 60, "S3 ListBuckets",
                     self.service)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    def env(self) -> dict[str, str]:
        """What boto3 (and the AWS CLI/SDKs) read to reach this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region, "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint, "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    def client(self):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
        )

    def make_bucket(self, name: str | None = None) -> str:
        name = name or f"test-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name
