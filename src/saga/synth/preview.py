"""A contact sheet of one family of a generated world: one row per class, labelled with the attributes that tell
the family's members apart, and the first few images of each class, as written to disk (JPEG included)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from saga.data.base import load_image
from saga.synth.layout import image_file
from saga.synth.world import load_world, varied_attributes

PREVIEW_FILE = "preview.png"


def write_preview(world_dir: str | Path, family: int | None = None, columns: int = 6) -> Path:
    """Write world_dir/preview.png of `family` (default: the largest test family, the hardest to tell apart)."""
    world_dir = Path(world_dir)
    world = load_world(world_dir)
    families = world.families()
    if family is None:
        test = [f for f, members in families.items() if members[0].id > world.num_train_classes] or list(families)
        family = max(test, key=lambda f: (len(families[f]), -f))
    members = families[family]
    varied = varied_attributes(members)
    columns = min(columns, world.images_per_class)
    font = ImageFont.load_default(size=13)
    side = "test" if members[0].id > world.num_train_classes else "train"
    title = (f"family {family} ({side} classes {members[0].id}-{members[-1].id}), "
             f"members differ in: {', '.join(varied)}")
    cell, label_w, title_h = max(world.size, 96), 190, 28
    width = max(label_w + columns * cell, int(font.getlength(title)) + 12)
    sheet = Image.new("RGB", (width, title_h + len(members) * cell), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), title, fill=(0, 0, 0), font=font)
    for row, cls in enumerate(members):
        y = title_h + row * cell
        text = f"class {cls.id:03d}\n" + "\n".join(f"{a}: {cls.combination[a]}" for a in varied)
        draw.multiline_text((6, y + 6), text, fill=(0, 0, 0), font=font, spacing=3)
        for col in range(columns):
            img = load_image(world_dir / "images" / image_file(cls, col))
            sheet.paste(img.resize((cell, cell), Image.NEAREST), (label_w + col * cell, y))
    path = world_dir / PREVIEW_FILE
    sheet.save(path)
    return path
