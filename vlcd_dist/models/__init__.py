"""Models: the vision-language teacher, the student registry, and the distiller container."""

from vlcd_dist.models.distiller import Distiller
from vlcd_dist.models.foreign_teacher import HFClipTeacher, OpenClipTeacher
from vlcd_dist.models.preprocess import ImageInput
from vlcd_dist.models.student import (
    Student,
    StudentConfig,
    build_student,
    create_student,
    is_student,
    list_students,
    register_student,
    timm_student,
)
from vlcd_dist.models.teacher import (
    FrozenTeacher,
    TeacherConfig,
    VisionLanguageTeacher,
    create_teacher,
    list_teachers,
    register_teacher,
    resolve_dtype,
    save_teacher,
    teacher_config,
)
from vlcd_dist.models.towers import ImageTower, TextTower, packaged_minilm_path
from vlcd_dist.models.weights import ModelError, load_state_dict, state_dict_hash

__all__ = [
    "Distiller",
    "FrozenTeacher",
    "HFClipTeacher",
    "ImageInput",
    "ImageTower",
    "ModelError",
    "OpenClipTeacher",
    "Student",
    "StudentConfig",
    "TeacherConfig",
    "TextTower",
    "VisionLanguageTeacher",
    "build_student",
    "create_student",
    "create_teacher",
    "is_student",
    "list_students",
    "list_teachers",
    "load_state_dict",
    "packaged_minilm_path",
    "register_student",
    "register_teacher",
    "resolve_dtype",
    "save_teacher",
    "state_dict_hash",
    "teacher_config",
    "timm_student",
]
