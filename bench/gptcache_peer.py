"""GPTCache's own server (the `gptcache_server` package's FastAPI app, its /put and /get
routes) with GPTCache's exact-match cache: `cache.init()` with its defaults (an in-memory
map, ExactMatchEvaluation) and the prompt as the key (`get_prompt`, what the server's own
setup uses for /put and /get). bench/run starts it to measure GPTCache's
exact hits through the same load client as Daena's.

  python bench/gptcache_peer.py PORT
"""

import sys

import uvicorn
from gptcache import cache
from gptcache.processor.pre import get_prompt
from gptcache_server.server import app

if __name__ == "__main__":
    # The server's own main() would set up the similarity cache (ONNX embeddings + FAISS);
    # its exact-match cache is GPTCache's default initialisation.
    cache.init(pre_embedding_func=get_prompt)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
