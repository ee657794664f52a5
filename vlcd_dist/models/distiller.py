"""One frozen teacher feeding several students: the container the distillation stages train."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from vlcd_dist.models.teacher import FrozenTeacher, VisionLanguageTeacher
from vlcd_dist.models.weights import ModelError


class Distiller(nn.Module):
    """A :class:`FrozenTeacher` and a ``ModuleDict`` of students sharing its d.

    ``.train()`` puts the students in training mode and leaves the teacher in eval mode with
    no gradients. The teacher runs once per batch and its features feed every student. Wrap
    each student with the backend (DDP/DeepSpeed) separately; the teacher is never wrapped.
    """

    def __init__(
        self,
        teacher: FrozenTeacher | VisionLanguageTeacher | nn.Module,
        students: Mapping[str, nn.Module],
    ) -> None:
        super().__init__()
        if not isinstance(teacher, FrozenTeacher):
            teacher = FrozenTeacher(teacher)
        if not students:
            raise ModelError("Distiller needs at least one student")
        for name, student in students.items():
            dim = getattr(student, "embed_dim", None)
            if dim is not None and dim != teacher.embed_dim:
                raise ModelError(
                    f"student {name!r} projects to d={dim} but the teacher's d is "
                    f"{teacher.embed_dim}; build the student with embed_dim={teacher.embed_dim}"
                )
        self.teacher = teacher
        self.students = nn.ModuleDict(dict(students))

    def teacher_features(self, images: torch.Tensor) -> torch.Tensor:
        """z_T [B, d], fp32, no grad."""
        return self.teacher.encode_image(images)

    def forward(
        self, images: torch.Tensor, student_images: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        """Teacher and student features of one batch.

        images: [B, 3, H, W] teacher input in [0, 1]. student_images: [B, 3, H', W'] student
        input in [0, 1] when it differs (e.g. another resolution); defaults to ``images``.
        Every model normalises its own view (a Student with its ``normalize``).
        Returns {"teacher": z_T [B, d], "students": {name: z_k [B, d]}}.
        """
        student_images = images if student_images is None else student_images

        def own_view(student: nn.Module) -> torch.Tensor:
            normalize = getattr(student, "normalize", None)
            return normalize(student_images) if callable(normalize) else student_images

        return {
            "teacher": self.teacher_features(images),
            "students": {name: s(own_view(s)) for name, s in self.students.items()},
        }

    def student_parameters(self, name: str | None = None) -> Iterator[nn.Parameter]:
        """Trainable parameters of one student, or of all students (never the teacher's)."""
        modules = [self.students[name]] if name is not None else list(self.students.values())
        for module in modules:
            yield from (p for p in module.parameters() if p.requires_grad)
