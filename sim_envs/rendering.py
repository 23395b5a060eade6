"""Headless rendering: picks the OpenGL backend and renders camera images fast.

``MUJOCO_GL`` must be set before ``mujoco`` is first imported, so ``sim_envs/__init__.py`` calls
``select_gl_backend`` at import. EGL is preferred (Mesa software EGL is enough); OSMesa is the fallback
(``apt-get install libosmesa6``). Shadows, reflections and the skybox are switched off: they cost ~10x.

When no renderer can be made, :class:`CameraRenderer` raises :class:`RenderingUnavailableError` saying what
to set, e.g. for ``MUJOCO_GL=glfw`` (a desktop setting) on a machine without a display, which is caught before
GLFW is even tried. Entry points that render turn it into one line ``error: ...`` on stderr and exit code 2:
``sim_envs``' own CLIs with :func:`exit_on_render_error`, the toolkit's through ``robopretrain.cli``.
"""
from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import functools
import importlib
import importlib.util
import os
import sys
import weakref
from typing import Any, Callable, TypeVar

import numpy as np


HEADLESS_BACKENDS = "MUJOCO_GL=egl (or MUJOCO_GL=osmesa, after apt-get install libosmesa6)"
EXIT_BAD_INPUT = 2
F = TypeVar("F", bound=Callable[..., Any])


class RenderingUnavailableError(RuntimeError):
    """MuJoCo cannot render here with this ``MUJOCO_GL`` (no display for GLFW, no EGL/OSMesa library, ...)."""


def display_problem() -> str | None:
    """Why the chosen ``MUJOCO_GL`` cannot render on this machine, when that is known without trying: GLFW on
    Linux needs an X11 or Wayland display. ``None`` when nothing is known to be wrong."""
    backend = os.environ.get("MUJOCO_GL", "").strip().lower()
    if backend in ("", "glfw") and sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return (f"MUJOCO_GL={os.environ.get('MUJOCO_GL', '')!r} renders through a window system, and this machine has "
                f"no display (DISPLAY is not set); on a headless machine set {HEADLESS_BACKENDS}")
    return None


def check_display() -> None:
    """Raise :class:`RenderingUnavailableError` when :func:`display_problem` knows rendering cannot work here: in a
    process about to start renderers elsewhere (e.g. collection workers), so it fails once, before they start."""
    problem = display_problem()
    if problem is not None:
        raise RenderingUnavailableError(f"cannot render camera images: {problem}")


TRACEBACK_OFF = ("", "0", "false", "no", "off")  # ROBOPRETRAIN_TRACEBACK values that mean off


def exit_on_render_error(func: F) -> F:
    """Decorate a CLI's main: :class:`RenderingUnavailableError` becomes ``error: <message>`` on stderr and exit
    code 2, no traceback (``ROBOPRETRAIN_TRACEBACK=1`` re-raises it; the values robopretrain.cli takes as off do
    not)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RenderingUnavailableError as exc:
            # robopretrain.cli.TRACEBACK_OFF's values (sim_envs imports nothing of robopretrain; a test pins them)
            if os.environ.get("ROBOPRETRAIN_TRACEBACK", "").strip().lower() not in TRACEBACK_OFF:
                raise
            sys.stdout.flush()
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_BAD_INPUT) from None

    return wrapper  # type: ignore[return-value]


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


def _ignore_half_made_renderer(unraisable: Any) -> None:
    """``sys.unraisablehook`` while a Renderer is made: drop the error of a half-made one's ``__del__``."""
    if not (isinstance(unraisable.exc_value, AttributeError) and "_mjr_context" in str(unraisable.exc_value)):
        sys.__unraisablehook__(unraisable)


_RENDERED_IN: int | None = None  # the process that made this module's first renderer (inherited by a fork)


def check_not_forked_after_rendering() -> None:
    """Raise :class:`RenderingUnavailableError` in a process forked from one that had already rendered with EGL:
    the EGL context does not survive ``fork`` and MuJoCo's renderer waits forever there (gymnasium's
    ``AsyncVectorEnv`` forks by default on Linux, after a sanity-check render in the parent: a hang at the first
    reset). Spawned workers, or a fork before any rendering, are fine."""
    if _RENDERED_IN is not None and _RENDERED_IN != os.getpid() and \
            os.environ.get("MUJOCO_GL", "").strip().lower() == "egl":
        raise RenderingUnavailableError(
            f"this process was forked from process {_RENDERED_IN} after it had rendered with EGL, whose context does "
            "not survive a fork (MuJoCo's renderer would hang here); start worker processes with the 'spawn' method "
            "(gymnasium.vector.AsyncVectorEnv(..., context='spawn'), multiprocessing.get_context('spawn'))")


class CameraRenderer:
    """Renders named cameras of one model at one image size, with the costly effects off."""

    def __init__(self, model, height: int, width: int) -> None:
        import mujoco

        self._mujoco = mujoco
        preload_llvm_libraries()
        self._renderer = None
        check_display()
        check_not_forked_after_rendering()
        failure = None
        interrupted: BaseException | None = None
        hook = sys.unraisablehook
        sys.unraisablehook = _ignore_half_made_renderer
        try:
            try:
                self._renderer = mujoco.Renderer(model, height=height, width=width)
            except Exception as exc:  # the GL context could not be made: say what to do about it
                failure = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            except BaseException as exc:  # Ctrl-C / SIGTERM meanwhile: kept without the frames holding that
                interrupted = exc.with_traceback(None)  # Renderer, freed here, not at exit after the hook is gone
        finally:  # leaving the except block freed the half-made Renderer (its __del__ fails, mujoco 3.3)
            sys.unraisablehook = hook
        if interrupted is not None:
            raise interrupted
        if failure is not None:  # raised here, not inside the except block: nothing keeps that Renderer alive
            raise RenderingUnavailableError(
                f"could not create a MuJoCo renderer with MUJOCO_GL={os.environ.get('MUJOCO_GL')!r} ({failure}); "
                f"headless rendering needs EGL (Mesa's libegl1) or OSMesa: set {HEADLESS_BACKENDS}")
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
        flags[mujoco.mjtRndFlag.mjRND_FOG] = False
        self._option = mujoco.MjvOption()
        self.height, self.width = height, width
        global _RENDERED_IN
        _RENDERED_IN = _RENDERED_IN or os.getpid()
        _LIVE.add(self)
        global _EXIT_HOOK
        if not _EXIT_HOOK:  # registered after mujoco's GL module, so it runs before mujoco's hook
            atexit.register(_close_live_renderers)
            _EXIT_HOOK = True

    def render(self, data, camera: str | int) -> np.ndarray:
        """An (H, W, 3) uint8 image, the right way up (row 0 is the top of the picture)."""
        check_not_forked_after_rendering()  # a renderer a forked child inherited hangs there too
        self._renderer.update_scene(data, camera=camera, scene_option=self._option)
        return self._renderer.render()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        _LIVE.discard(self)
