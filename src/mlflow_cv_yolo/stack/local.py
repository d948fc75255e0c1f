"""`--stack local`: a throwaway MariaDB/MySQL and an S3 server started as processes
from what is installed, and MLflow's server on them; all state under one folder."""

from __future__ import annotations

from .base import Stack, StackInfo, info_on, start_mlflow_on
from .mysql import MySQLServer
from .s3 import S3Server


class LocalStack(Stack):
    kind = "local"

    def _start(self, reason: str) -> StackInfo:
        creds = self.credentials()
        mysql = MySQLServer(
            self.state_dir / "mysql",
            user=creds["mysql_user"],
            password=creds["mysql_password"],
            root_password=creds["mysql_root_password"],
            log=self.log,
        )
        s3 = S3Server(
            self.state_dir / "s3", access_key=creds["s3_access_key"], secret_key=creds["s3_secret_key"], log=self.log
        )
        mysql_endpoint, s3_endpoint = self._run_together(mysql, s3)
        s3_endpoint = self.with_credentials_file(s3_endpoint)
        url = start_mlflow_on(self, mysql_endpoint, s3_endpoint, mysql.reset_database)
        return info_on(self.kind, url, reason, mysql_endpoint, s3_endpoint, s3.kind)
