"""Headless rendering: picks the OpenGL backend and renders camera images fast.

``MUJOCO_GL`` must be set before ``mujoco`` is first imported, so ``sim_envs/__init__.py`` calls
``select_gl_backend`` at import. EGL is preferred (Mesa software EGL is enough); OSMesa is the fallback
(``apt-get install libosmesa6``). Shadows, reflections and the skybox are switched off: they cost ~10x.
"""
from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import importlib
import importlib.util
import os
import weakref

import numpy as np


def _loadable(libname: str) -> bool:
    path = ctypes.util.find_library(libname)
    if path is None:
        return False
    try:
        ctypes.CDLL(path)
    except OSError:
        return False
    return True


def select_gl_backend() -> str:
    """Set ``MUJOCO_GL`` (unless the user already did) to ``egl`` or, failing that, ``osmesa``."""
    if os.environ.get("MUJOCO_GL"):
        backend = os.environ["MUJOCO_GL"]
    elif _loadable("EGL"):
        backend = "egl"
    elif _loadable("OSMesa"):
        backend = "osmesa"
    else:
        backend = "egl"  # let mujoco report the failure when a renderer is first made
    os.environ["MUJOCO_GL"] = backend
    if backend == "osmesa":
        os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    elif backend == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    _rebind_if_mujoco_was_imported(backend)
    return backend


def _rebind_if_mujoco_was_imported(backend: str) -> None:
    """mujoco picks its GL context class when first imported; if that happened before us, switch it now."""
    import importlib
    import sys

    gl_context = getattr(sys.modules.get("mujoco"), "gl_context", None)
    if gl_context is None or backend not in ("egl", "osmesa") or getattr(gl_context, "_MUJOCO_GL", backend) == backend:
        return
    gl_context.GLContext = importlib.import_module(f"mujoco.{backend}").GLContext


_LIVE: "weakref.WeakSet[CameraRenderer]" = weakref.WeakSet()
_EXIT_HOOK = False


def _close_live_renderers() -> None:
    # Free GL contexts before mujoco's own exit hook terminates the EGL display (atexit runs last-in first).
    for renderer in list(_LIVE):
        try:
            renderer.close()
        except Exception:  # the display is already gone: nothing left to free
            pass


def preload_llvm_libraries() -> None:
    """Load Triton's LLVM before Mesa's, if Triton is installed.

    Mesa's software renderer (llvmpipe, behind headless EGL) loads its own LLVM when the first GL context is
    made. Triton embeds another LLVM; if it is loaded after Mesa's (PyTorch imports it lazily, e.g. when an
    optimizer is built), the process segfaults. Loaded first, both coexist. Costs ~0.3 s once.
    """
    if importlib.util.find_spec("triton") is None:
        return
    try:
        importlib.import_module("triton._C.libtriton")
    except Exception:  # a broken Triton install: nothing to protect
        pass


class CameraRenderer:
    """Renders named cameras of one model at one image size, with the costly effects off."""

    def __init__(self, model, height: int, width: int) -> None:
        import mujoco

        self._mujoco = mujoco
        preload_llvm_libraries()
        try:
            self._renderer = mujoco.Renderer(model, height=height, width=width)
        except Exception as exc:  # the GL context could not be made: say what to do about it
            raise RuntimeError(
                f"could not create a MuJoCo renderer with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r}: {exc}. "
                "Headless rendering needs EGL (Mesa's libegl1) or OSMesa (apt-get install libosmesa6, "
                "then MUJOCO_GL=osmesa).") from exc
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
        flags[mujoco.mjtRndFlag.mjRND_FOG] = False
        self._option = mujoco.MjvOption()
        self.height, self.width = height, width
        _LIVE.add(self)
        global _EXIT_HOOK
        if not _EXIT_HOOK:  # registered after mujoco's GL module, so it runs before mujoco's hook
            atexit.register(_close_live_renderers)
            _EXIT_HOOK = True

    def render(self, data, camera: str | int) -> np.ndarray:
        """An (H, W, 3) uint8 image, the right way up (row 0 is the top of the picture)."""
        self._renderer.update_scene(data, camera=camera, scene_option=self._option)
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        _LIVE.discard(self)
