"""The results gallery in the browser: server-rendered pages under `/ui/`.

`router` carries every page (sign-in, jobs, one job's cards, models, one model), the
2-second progress poll and the static CSS/JS. Mount it with
`app.include_router(web.router)`; it needs nothing else from the app than the
`ApiState` the JSON API already builds (database sessions, settings, object store).
"""

from fastapi import APIRouter

from api.web import auth, pages, render

router = APIRouter(include_in_schema=False)
for _module in (auth, pages, render):
    router.include_router(_module.router)

__all__ = ["router"]
