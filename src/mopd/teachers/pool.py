"""Many local teachers, bounded memory: at most `max_resident` of them loaded at once.

N domain teachers of the student's size would need N models' memory. The pool keeps at most
`max_resident` local transformers teachers (kind hf / self) loaded on their device; the others
wait offloaded: in CPU memory when they run on a GPU (`model.to("cpu")`), on disk when they
run on the CPU, so that the process's RAM stays bounded too (a safetensors snapshot written
at the first eviction, read back with `from_pretrained`; the in-memory model is dropped).
A teacher is loaded when it is asked to score, evicting the least recently used one; the
router asks the loaded teachers first and the others in the order the batch needs them, so a
batch loads each missing teacher once. Remote and vLLM teachers hold no memory here and are
not pooled.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path

from transformers.utils import logging as hf_logging

from mopd.rollout.types import TokenBatch
from mopd.teachers.base import Teacher, TeacherScores
from mopd.teachers.cross_tokenizer import CrossTokenizerTeacher
from mopd.teachers.hf_teacher import HFTeacher


class PooledTeacher(Teacher):
    """A Teacher whose model the pool loads before it scores and may offload afterwards."""

    def __init__(self, pool: "TeacherPool", teacher: HFTeacher):
        self.name = teacher.name
        self.teacher = teacher
        self.pool = pool
        p = next(teacher.model.parameters())
        self.device, self.dtype, self.cls = p.device, p.dtype, type(teacher.model)
        self.snapshot: Path | None = None  # CPU teachers: where the evicted weights wait
        self.resident = True

    def score(self, batch: TokenBatch, topk: int = 0) -> TeacherScores:
        with self.pool.lock:  # no eviction while it scores
            self.pool.load(self)
            return self.teacher.score(batch, topk=topk)

    def offload(self, directory: Path) -> None:
        model = self.teacher.model
        if self.device.type != "cpu":
            model.to("cpu")
        else:
            if self.snapshot is None:  # frozen weights: one snapshot serves every reload
                self.snapshot = directory / f"teacher-{id(self):x}"
                with _quiet():
                    model.save_pretrained(self.snapshot, safe_serialization=True)
            self.teacher.model = None  # the only reference (a model holds no cycles): its memory goes
            del model
        self.resident = False

    def reload(self) -> None:
        if self.device.type != "cpu":
            self.teacher.model.to(self.device)
        else:
            with _quiet():
                model = self.cls.from_pretrained(self.snapshot, dtype=self.dtype)
            self.teacher.model = model.eval().requires_grad_(False)
        self.resident = True


class TeacherPool:
    """Keeps at most `max_resident` pooled teachers loaded (None: no limit, nothing pooled)."""

    def __init__(self, max_resident: int | None = None):
        if max_resident is not None and max_resident < 1:
            raise ValueError(f"teacher_pool.max_resident must be >= 1, got {max_resident}")
        self.max_resident = max_resident
        self.members: list[PooledTeacher] = []
        self.recent: list[PooledTeacher] = []  # loaded members, least recently used first
        self.lock = threading.RLock()
        self._dir: Path | None = None

    def add(self, teacher: Teacher) -> Teacher:
        """Pool an in-process transformers teacher; any other teacher is returned as it is. A
        teacher that wraps one (another tokenizer's, mopd.teachers.cross_tokenizer) has it pooled."""
        if isinstance(teacher, CrossTokenizerTeacher) and isinstance(teacher.inner, HFTeacher):
            teacher.inner = self.add(teacher.inner)
            return teacher
        if self.max_resident is None or not isinstance(teacher, HFTeacher):
            return teacher
        with self.lock:
            self.make_room(1)
            member = PooledTeacher(self, teacher)
            self.members.append(member)
            self.recent.append(member)
            return member

    def make_room(self, n: int = 1) -> None:
        """Offload least recently used teachers until `n` more can be loaded."""
        if self.max_resident is None:
            return
        with self.lock:
            while self.recent and len(self.recent) + n > self.max_resident:
                self.recent.pop(0).offload(self.offload_dir())

    def load(self, member: PooledTeacher) -> None:
        with self.lock:
            if member.resident:
                self.recent.remove(member)
            else:
                self.make_room(1)
                member.reload()
            self.recent.append(member)

    def offload_dir(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="mopd-teachers-"))
            weakref.finalize(self, shutil.rmtree, self._dir, ignore_errors=True)
        return self._dir

    @property
    def resident(self) -> list[str]:
        return [m.name for m in self.recent]


@contextmanager
def _quiet():
    """No transformers progress bars for the pool's saves and loads: they would break into the run's own."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()
