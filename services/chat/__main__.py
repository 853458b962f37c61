from services.chat.service import build
from services.common.server import main

main("chat", build)
