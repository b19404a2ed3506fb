"""Run:ai's own SDK (runapy) against what runai-token-sync serves and writes.

  client.py credentials URL CA CLIENT_ID SECRET_FILE
      runapy's own token request (its app_token grant to /api/v1/token),
      then GET /api/v1/clusters with that token.
  client.py token-file URL CA TOKEN_FILE
      a client built from the token a RunaiCredential's Secret holds (as a
      volume would mount it), then GET /api/v1/clusters.

Prints the HTTP status and the clusters' names; exits 1 on any failure.
"""

import json
import sys

from runai.api import ClustersApi
from runai.api_client import ApiClient
from runai.configuration import Configuration


class TokenFileClient(ApiClient):
    """A runapy client whose bearer token is read from a file.

    runapy 1.224 requests a token in ApiClient's constructor even with
    Configuration(bearer_token=...); this reads the file instead.
    """

    def __init__(self, configuration, token_file):
        self._token_file = token_file
        super().__init__(configuration)

    def _make_token_request(self):
        with open(self._token_file) as f:
            return f.read().strip()


def main(argv):
    mode, url, ca = argv[1], argv[2], argv[3]
    if mode == "credentials":
        client_id, secret_file = argv[4], argv[5]
        with open(secret_file) as f:
            secret = f.read().strip()
        config = Configuration(
            client_id=client_id,
            client_secret=secret,
            runai_base_url=url,
            ssl_ca_cert=ca,
            retry_enabled=False,
            # Its refresher decodes the JWT as standard base64, which a
            # base64url payload need not be; one call needs no refresh.
            auto_refresh_token=False,
        )
        client = ApiClient(config)
    elif mode == "token-file":
        token_file = argv[4]
        with open(token_file) as f:
            token = f.read().strip()
        config = Configuration(
            bearer_token=token, runai_base_url=url, ssl_ca_cert=ca, retry_enabled=False
        )
        client = TokenFileClient(config, token_file)
    else:
        raise SystemExit(f"unknown mode {mode}")
    response = ClustersApi(client).get_clusters()
    body = response.data
    if isinstance(body, (str, bytes)):
        body = json.loads(body)
    print(response.status_code, ",".join(c["name"] for c in body))
    return 0 if response.status_code == 200 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
