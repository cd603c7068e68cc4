"""The storytelling studio: a web page and a live director API on one `ShotStream` model.

    from shotstream_jax import ShotStream
    from shotstream_jax.studio import create_app
    app = create_app(ShotStream.load())     # serve with uvicorn; or the `shotstream-studio` command

See the README's "Studio" section for the API.
"""
from shotstream_jax.studio.app import create_app
from shotstream_jax.studio.director import Director, StudioError

__all__ = ["create_app", "Director", "StudioError"]
