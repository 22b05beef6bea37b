"""`mle-stream keys generate`: an Ed25519 key pair to sign commands with."""

from __future__ import annotations

import argparse
from pathlib import Path

from mle_stream.cli.common import Subcommands, add_command
from mle_stream.config import Settings

EXTRA = "actuator"  # pip install 'mle-stream[EXTRA]' (pyproject.toml)

EXAMPLES = """\
examples:
  mle-stream keys generate --key-id worker --out keys/
  mle-stream keys generate --key-id alice --out ~/.mle-stream/   # an operator's own key"""


def add_parser(sub: Subcommands) -> None:
    p = add_command(sub, "keys", "make an Ed25519 key pair to sign commands with",
                    "mle-stream keys generate --key-id ID --out DIR writes DIR/ID.key, the private key (PEM, mode "
                    "0600: give it to the signer only, e.g. as MLE_SIGNING_KEY_FILE from a Kubernetes Secret), and "
                    "DIR/ID.pub, the public key (put it in every verifier's MLE_VERIFY_KEYS_DIR), and prints the "
                    "MLE_VERIFY_KEYS entry of the public key. Existing files are never overwritten. See "
                    "docs/command-signing.md.", EXAMPLES)
    keys_sub = p.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    p = add_command(keys_sub, "generate", "write ID.key and ID.pub into DIR",
                    "Write an Ed25519 key pair: DIR/ID.key (private, 0600) and DIR/ID.pub.", EXAMPLES)
    p.add_argument("--key-id", required=True, metavar="ID",
                   help="the key's id, named in every signature it makes (letters, digits, '.', '_', '-')")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="directory to write the two files into")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from mle_stream.keys import generate_key_pair, verify_keys_entry

    private, public = generate_key_pair(args.key_id, args.out)
    print(f"wrote {private} (private key, mode 0600: the signer's MLE_SIGNING_KEY_FILE or --key-file; keep it "
          f"secret) and {public} (public key: copy it into each verifier's MLE_VERIFY_KEYS_DIR)\n"
          f"MLE_VERIFY_KEYS entry: {verify_keys_entry(public)}")
    return 0
