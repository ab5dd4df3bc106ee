"""`zenfer-serve`: binds the port, loads the model, and serves the page until Ctrl-C.

The port is bound before anything heavy is imported, so a second server on a busy port fails
in a second with one line, not after loading a model nor with uvicorn's multi-line log. The
socket listens from then on: a request made while the model loads waits, then is answered.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from collections.abc import Sequence

from zenfer_jax import cli, errors
from zenfer_jax.deploy import faces
from zenfer_jax.serve import app as app_lib


class PortInUse(OSError, errors.UserError):
  """Another program (another zenfer-serve?) listens on the address already."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  limits = app_lib.Limits()
  p = cli.ArgumentParser(
    prog='zenfer-serve',
    description='A local web page that reads the expressions of faces in photos and from the '
    'webcam (python -m zenfer_jax.serve is the same program).',
  )
  p.add_argument(
    '--checkpoint',
    default='fer2013_r',
    help='a shipped model name, a model dir, a training workdir, or an exported '
    '.onnx/.tflite/.stablehlo file (default: fer2013_r, the FER2013 model that ships)',
  )
  p.add_argument(
    '--host', default='127.0.0.1', help='address to listen on (default: this machine only)'
  )
  p.add_argument('--port', type=int, default=8000, help='port (0: a free one, printed)')
  p.add_argument(
    '--recipe', help='eval preprocessing (rafdb, affectnet, ...) when the card records none'
  )
  p.add_argument(
    '--image_size', type=cli.positive_int, help='input size when the card records none'
  )
  faces.add_options(p, align_note=' (as predict)')
  p.add_argument(
    '--max_upload_mb',
    type=cli.positive_float,
    default=limits.max_upload_bytes / 2**20,
    help='largest upload accepted, in MiB',
  )
  p.add_argument(
    '--max_pixels',
    type=cli.positive_int,
    default=limits.max_pixels,
    help='largest image accepted (width x height), checked before decoding',
  )
  p.add_argument(
    '--max_pending',
    type=cli.positive_int,
    default=limits.max_pending,
    help='requests classified or waiting at once; more are answered 503 (busy)',
  )
  args = p.parse_args(argv)
  if not 0 <= args.port <= 65535:
    p.error(f'--port {args.port}: expected 0 to 65535')
  return args


def bind(host: str, port: int) -> socket.socket:
  """A listening TCP socket on host:port; PortInUse if something listens there already."""
  try:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
  except socket.gaierror as e:
    raise errors.InvalidInput(
      f'--host {host}: not an address of this machine ({e.strerror})'
    ) from None
  family, _, _, _, address = infos[0]
  sock = socket.socket(family, socket.SOCK_STREAM)
  # As uvicorn does: a port left in TIME_WAIT by a stopped server is free again at once. A port
  # that a server listens on stays refused (Linux allows no second listener without SO_REUSEPORT).
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    sock.bind(address)
    sock.listen(128)
  except OSError as e:
    sock.close()
    if e.errno == errno.EADDRINUSE:
      raise PortInUse(
        f'{host}:{port} is already in use (another zenfer-serve?): stop it, or pass --port '
        'with another number (--port 0 picks a free one)'
      ) from None
    if e.errno == errno.EADDRNOTAVAIL:
      raise errors.InvalidInput(f'--host {host}: not an address of this machine') from None
    raise
  sock.set_inheritable(True)
  return sock


def url(sock: socket.socket) -> str:
  host, port = sock.getsockname()[:2]
  return f'http://[{host}]:{port}/' if ':' in host else f'http://{host}:{port}/'


@cli.command
def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  sock = bind(args.host, args.port)
  try:
    cli.setup_logging(args.verbosity, uses_tensorflow=True)
    import uvicorn

    # Here, after the port is bound and the logging set up: TensorFlow, and JAX (~2 s) for a
    # model dir.
    from zenfer_jax.data.pipeline import hide_gpus_from_tf
    from zenfer_jax.serve import model

    hide_gpus_from_tf()
    try:
      service = model.FaceService(
        args.checkpoint, args.recipe, args.image_size, args.align, args.min_face_confidence
      )
      service.warm_up()
    except model.LOAD_ERRORS as e:
      return cli.report(e)
    limits = app_lib.Limits(
      max_upload_bytes=int(args.max_upload_mb * 2**20),
      max_pixels=args.max_pixels,
      max_pending=args.max_pending,
    )
    web_app = app_lib.create_app(service, limits)
    # log_config=None: uvicorn's loggers go through cli's handlers, quiet unless --verbosity.
    server = uvicorn.Server(uvicorn.Config(web_app, log_config=None, lifespan='off'))
    print(
      f'zenfer-serve: {url(sock)} (model {service.info()["model"]}); Ctrl-C stops it',
      flush=True,
    )
    try:
      server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn hands a captured Ctrl-C on once it has shut down...
      pass
    # ...but not always (seen under load: run() returned, no KeyboardInterrupt): both are a stop.
    print('zenfer-serve: stopped', file=sys.stderr, flush=True)
  except KeyboardInterrupt:  # Ctrl-C while the model was still loading.
    print('zenfer-serve: stopped', file=sys.stderr, flush=True)
  finally:
    sock.close()
  return 0
