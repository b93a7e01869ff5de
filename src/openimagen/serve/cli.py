"""`openimagen serve`: the argparse lines cli.py adds, and starting uvicorn on a socket we bind ourselves
(so --port 0 works and the URL printed is the one that answers)."""
from __future__ import annotations

import os
import socket

DEFAULT_PORT = 7860


def add_parser(sub, positive_int, model_name) -> None:
    s = sub.add_parser("serve", help="a local web page and HTTP API (A1111- and OpenAI-compatible) over one warm model")
    s.add_argument("--model", default=None, type=model_name, help="a model folder or DeepFloyd IF hub id (default: bundled)")
    s.add_argument("--sr", default=None, type=model_name, help="a DeepFloyd IF stage II to run after --model")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; others need --token)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"port (default {DEFAULT_PORT}, A1111's: its scripts work unchanged; 0 = any free port)")
    s.add_argument("--token", default=os.environ.get("OPENIMAGEN_TOKEN"),
                   help="bearer token every request must carry (env OPENIMAGEN_TOKEN); required off loopback")
    s.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another Host name to answer to (e.g. a LAN name); loopback names always work")
    s.add_argument("--out", default="openimagen-gallery", help="gallery folder: images, index, uploads (default: openimagen-gallery)")
    s.add_argument("--device", action="append", default=None,
                   help="cpu, cuda:0 ... ; repeat for one worker per device (default cpu)")
    s.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="weights dtype (default auto: bf16 where the device has it natively, else fp32; precision.py)")
    s.add_argument("--max-queue", type=positive_int("--max-queue"), default=16, help="jobs waiting before 429 (default 16)")
    s.add_argument("--max-body-mb", type=positive_int("--max-body-mb"), default=32, help="request body limit in MiB (default 32)")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        raise ImportError(f"`openimagen serve` needs the serve extra: pip install 'openimagen[serve]' ({e})") from None
    from .settings import Settings

    settings = Settings(out_dir=args.out, host=args.host, port=args.port, token=args.token,
                        allowed_hosts=tuple(args.allow_host), max_queue=args.max_queue,
                        max_body_bytes=args.max_body_mb * 1024 * 1024, devices=tuple(args.device or ["cpu"]))
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        raise OSError(f"cannot listen on {args.host}:{args.port} ({e.strerror}); pick another --port") from None
    port = sock.getsockname()[1]
    app = create_app(settings, model=args.model, sr=args.sr, precision=args.precision)
    shown = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(f"openimagen serve: http://{shown}:{port}/  (API docs /docs; gallery in {settings.out_dir})", flush=True)
    if args.token:
        print(f"every request needs 'Authorization: Bearer <token>'; open the page once as http://{shown}:{port}/?token=<token>",
              flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)).run(sockets=[sock])
    return 0
