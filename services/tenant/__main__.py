from services.common.server import main
from services.tenant.service import build

main("tenant", build)
