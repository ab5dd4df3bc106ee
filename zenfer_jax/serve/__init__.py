"""A local web page that reads the expressions of faces: in a photo, or live from the webcam.

  zenfer-serve                         # or: python -m zenfer_jax.serve; then open the URL it prints
  zenfer-serve --checkpoint DIR        # any model dir, training workdir or exported file
  zenfer-serve --port 0                # a free port, printed

The page (static HTML, JavaScript and CSS in `static/`, nothing from the network) takes a photo
dropped or picked, or the webcam's frames one after the other, sends each to `POST /predict`
and draws every face's box with its seven expression probabilities as bars; the webcam runs as
fast as the server answers, and shows that rate. `POST /predict` answers with the JSON that
`predict --detect_faces --json` prints, made by the same function (`model.FaceService`), so
detection and alignment are the command line's. The limits and the errors are `app`'s.

Why Starlette and uvicorn: the app is three routes and a folder of static files, and Starlette
is exactly that much (routing, static files, streamed request bodies to enforce an upload limit
before the body is in memory) on one small pure-Python wheel with a single dependency (anyio);
FastAPI adds pydantic and request-model machinery this API has no use for, Gradio a front end
of its own and a much larger install, where the page here has to be our own, tested in a
browser. uvicorn (with h11, pure Python) is the standard server for it, and takes an already
bound socket: `server` binds first, so a busy port is one line before any model is loaded.
By default the server listens on 127.0.0.1 only: a photo sent to it never leaves the machine.
"""

from zenfer_jax.serve.server import main

__all__ = ['main']
