from services.calls.service import build
from services.common.server import main

main("calls", build)
