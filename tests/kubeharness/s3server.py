"""A real S3-compatible server on loopback: Versity's versitygw with its POSIX backend.

Why versitygw and not MinIO: MinIO's upstream publishes no tagged Go module versions and its
community source is no longer maintained; it builds from the proxy only at a pseudo-version and
costs several times versitygw's cold build (numbers in tests/cluster/README.md), which the CI
budget pays on every fresh machine. versitygw is a maintained, real S3 implementation (SigV4,
multipart, ListObjectsV2, conditional writes) whose buckets are plain directories.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from . import binaries
from .process import Service, free_port, port_open, wait_for

REGION = "us-east-1"


@dataclass
class S3Server:
    state: Path
    tie_to_parent: bool = True
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
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
        gw = binaries.find("versitygw")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.service = Service("s3", [
            str(gw), f"--port=127.0.0.1:{self.port}", f"--region={self.region}", "--quiet",
            "posix", str(self.data_dir),
        ], self.state, env={"ROOT_ACCESS_KEY": self.access_key,
                            "ROOT_SECRET_KEY": self.secret_key, "PATH": "/usr/bin:/bin"},
            tie_to_parent=self.tie_to_parent).start()
        try:
            wait_for(lambda: port_open(self.port), 60, "the S3 server's port", self.service)
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
