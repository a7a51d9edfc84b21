"""plot_anomaly_maps: one PNG grid, one colour scale, outlines where masks are."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.contour import ContourSet
from PIL import Image

from sklearn_metarefine import plot_anomaly_maps


@pytest.fixture
def panels():
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(5, 40, 40, 3), dtype=np.uint8)
    masks = np.zeros((5, 40, 40), dtype=bool)
    masks[3, 10:20, 5:15] = True
    masks[4, 30:35, 30:38] = True
    maps = rng.rand(5, 20, 20) + 2 * masks[:, ::2, ::2]
    return images, maps, masks


def test_writes_one_png_grid_and_registers_nothing_with_pyplot(tmp_path, panels):
    images, maps, masks = panels
    before = plt.get_fignums()
    path = tmp_path / "maps.png"
    figure = plot_anomaly_maps(images, maps, masks, path=path, n_cols=3, dpi=50)
    assert plt.get_fignums() == before
    with Image.open(path) as png:
        width, height = png.size
    expected = figure.get_size_inches() * 50
    assert (width, height) == tuple(np.round(expected).astype(int))
    panels_drawn = [ax for ax in figure.axes if ax.images]
    assert len(panels_drawn) == 5


def test_one_colour_scale_and_an_outline_only_where_a_mask_is(panels):
    images, maps, masks = panels
    figure = plot_anomaly_maps(images, maps, masks, alpha=0.4)
    try:
        axes = [ax for ax in figure.axes if ax.images]
        for ax, mask in zip(axes, masks):
            overlay = ax.images[1]
            assert overlay.get_clim() == (maps.min(), maps.max())
            assert overlay.get_alpha() == 0.4
            outlines = [c for c in ax.collections if isinstance(c, ContourSet)]
            assert bool(outlines) == bool(mask.any())
    finally:
        plt.close(figure)


def test_outline_lies_on_the_mask_in_image_coordinates(panels):
    images, maps, masks = panels
    figure = plot_anomaly_maps(images, maps, masks[:, ::4, ::4])
    try:
        ax = [ax for ax in figure.axes if ax.images][3]
        outline = next(c for c in ax.collections if isinstance(c, ContourSet))
        vertices = np.concatenate([p.vertices for p in outline.get_paths()])
        # The defect covers rows 10-19 and columns 5-14 of the 40-px image.
        assert 8 <= vertices[:, 1].min() and vertices[:, 1].max() <= 21
        assert 3 <= vertices[:, 0].min() and vertices[:, 0].max() <= 16
    finally:
        plt.close(figure)


def test_outline_of_a_coarse_mask_lies_on_its_cells_of_a_wide_image():
    # A 10 x 10 mask over a 40 x 80 image: its cells are 4 pixels high and 8
    # wide, their centres half a cell in; cells 4-5 cover rows 16-23 and
    # columns 32-47, where the contour at 0.5 runs between cell centres.
    image = np.zeros((40, 80), dtype=np.uint8)
    mask = np.zeros((10, 10), dtype=bool)
    mask[4:6, 4:6] = True
    figure = plot_anomaly_maps([image], [np.zeros((40, 80))], [mask])
    try:
        ax = next(ax for ax in figure.axes if ax.images)
        outline = next(c for c in ax.collections if isinstance(c, ContourSet))
        vertices = np.concatenate([p.vertices for p in outline.get_paths()])
        np.testing.assert_allclose(vertices[:, 0].min(), 31.5)
        np.testing.assert_allclose(vertices[:, 0].max(), 47.5)
        np.testing.assert_allclose(vertices[:, 1].min(), 15.5)
        np.testing.assert_allclose(vertices[:, 1].max(), 23.5)
    finally:
        plt.close(figure)


def test_titles_files_and_grey_images(tmp_path, panels):
    images, maps, _ = panels
    paths = []
    for i, image in enumerate(images[:2]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    figure = plot_anomaly_maps(
        paths, maps[:2], titles=["a", "b"], path=tmp_path / "f.png"
    )
    assert [ax.get_title() for ax in figure.axes if ax.images] == ["a", "b"]
    grey = images[:2, ..., 0] / 255.0
    figure = plot_anomaly_maps(grey, maps[:2], path=tmp_path / "g.png")
    assert figure.axes[0].images[0].get_array().ndim == 2
    assert figure.axes[0].images[0].get_cmap().name == "gray"  # not viridis


def test_mismatched_lengths_and_bad_maps_are_errors(panels):
    images, maps, masks = panels
    with pytest.raises(ValueError, match="lengths.*'images': 5.*'maps': 4"):
        plot_anomaly_maps(images, maps[:4])
    with pytest.raises(ValueError, match="'titles': 1"):
        plot_anomaly_maps(images, maps, masks, titles=["only one"])
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        plot_anomaly_maps(images, bad)
    with pytest.raises(ValueError, match=r"\(n_images, height, width\)"):
        plot_anomaly_maps(images, maps[0])
    # These failed inside numpy and matplotlib, or drew an inverted scale.
    with pytest.raises(ValueError, match="at least one image; got \\(0, 20, 20\\)"):
        plot_anomaly_maps(images[:0], maps[:0])
    with pytest.raises(ValueError, match="masks must have shape .*got \\(5, 1, 40, 40\\)"):
        plot_anomaly_maps(images, maps, masks[:, None])
    with pytest.raises(ValueError, match="vmin=5 is above vmax=1"):
        plot_anomaly_maps(images, maps, vmin=5, vmax=1)


def test_images_are_drawn_as_the_detectors_read_them(tmp_path):
    # A portrait file (EXIF orientation) was drawn sideways under its map,
    # and integer or 16-bit arrays were drawn white.
    exif = Image.Exif()
    exif[0x0112] = 8  # stored turned a quarter: shown 20 high and 40 wide
    path = tmp_path / "portrait.png"
    Image.new("RGB", (20, 40)).save(path, exif=exif.tobytes())
    figure = plot_anomaly_maps([path], np.zeros((1, 20, 40)))
    assert figure.axes[0].images[0].get_array().shape == (20, 40, 3)
    plt.close(figure)
    grey = np.full((2, 8, 8), 100)
    for images, shown in [
        (grey.astype(np.int64), 100 / 255),
        (grey.astype(np.uint16) * 257, 100 / 255),
        ([Image.fromarray(g.astype(np.uint16) * 257) for g in grey], 100 / 255),
    ]:
        figure = plot_anomaly_maps(images, np.zeros((2, 8, 8)))
        np.testing.assert_allclose(figure.axes[0].images[0].get_array(), shown)
        plt.close(figure)
    # The argument is images, not the detectors' X.
    with pytest.raises(ValueError, match=r"^images\[0\] has pixel values in \[2.0, 2"):
        plot_anomaly_maps(np.full((1, 8, 8), 2.0), np.zeros((1, 8, 8)))


def test_maps_of_images_of_several_sizes(tmp_path):
    # anomaly_map gives a list of maps for images of several sizes; drawing
    # them failed inside numpy ("inhomogeneous shape").
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 256, (32, 32, 3), np.uint8),
              rng.randint(0, 256, (24, 48, 3), np.uint8)]
    maps = [rng.rand(32, 32), 5 + rng.rand(24, 48)]
    masks = [np.zeros((32, 32), bool), np.ones((24, 48), bool)]
    figure = plot_anomaly_maps(images, maps, masks, path=tmp_path / "m.png")
    drawn = [ax.images[1].get_array() for ax in figure.axes if ax.images]
    assert [array.shape for array in drawn] == [(32, 32), (24, 48)]
    assert drawn[1].min() == maps[1].min()
    assert figure.axes[0].images[1].get_clim() == (maps[0].min(), maps[1].max())
    with pytest.raises(ValueError, match=r"maps\[1\] has shape \(24, 48, 1\)"):
        plot_anomaly_maps(images, [maps[0], maps[1][..., None]])


# The pictures of the command line: map overlays and contact sheets.


def test_an_overlay_blends_image_and_colour_half_and_half():
    from matplotlib import colormaps

    from sklearn_metarefine._pictures import map_overlay

    white = np.full((8, 8), 255, np.uint8)
    overlay = np.asarray(map_overlay(white, np.zeros((8, 8)), 1.0))
    lowest = np.asarray(colormaps["jet"](0.0)[:3]) * 255.0  # the map's lowest value
    np.testing.assert_array_equal(overlay[0, 0], np.round(0.5 * 255 + 0.5 * lowest))


def test_a_contact_sheet_lays_its_thumbnails_out_in_rows(tmp_path):
    from sklearn_metarefine._pictures import contact_sheet

    paths = []
    for i in range(10):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((16, 16), 100, np.uint8)).save(paths[-1])
    sixteen = []
    for value in (65535, 16384):  # white, and a quarter of it
        sixteen.append(tmp_path / f"{value}.png")
        Image.fromarray(np.full((16, 16), value, np.uint16)).save(sixteen[-1])
    sheet = tmp_path / "sheet.png"
    entries = [(path, [path.stem]) for path in paths + sixteen]
    contact_sheet(entries, sheet, title="t", columns=8, thumbnail=32)
    pixels = np.asarray(Image.open(sheet).convert("L"))
    cell_w, cell_h, top = 32 + 8, 32 + 8 + 12, 2 * 12  # margins 4, one caption line
    assert pixels.shape == (top + 2 * cell_h, 8 * cell_w)

    def centre(index):
        row, column = divmod(index, 8)
        return pixels[top + row * cell_h + 4 + 16, column * cell_w + 4 + 16]

    assert [centre(i) for i in range(10)] == [100] * 10
    assert [centre(10), centre(11)] == [255, 64]  # 16-bit images, scaled
    assert [centre(i) for i in range(12, 16)] == [255] * 4  # empty cells
    # a title wider than the thumbnails widens the sheet to hold it
    title = "Training images dropped by the refinement of line.joblib (round, score)"
    contact_sheet(entries[:1], sheet, title=title, thumbnail=32)
    assert Image.open(sheet).size[0] >= 6 * len(title)
