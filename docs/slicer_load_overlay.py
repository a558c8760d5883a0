"""Load a medanomaly CT with its residual overlay and nodule markers in 3D Slicer.

Paste into Slicer's Python console (View → Python Console) after setting RUN and SERIES, or run
    Slicer --python-script docs/slicer_load_overlay.py -- RUN_DIR SERIES_UID
"""

import sys

import slicer

RUN, SERIES = (sys.argv[-2], sys.argv[-1]) if len(sys.argv) >= 3 else ("runs/ct_nodules", "<SeriesInstanceUID>")

ct = slicer.util.loadVolume(f"{RUN}/volumes/{SERIES}.nii.gz")
residual = slicer.util.loadVolume(f"{RUN}/overlays/{SERIES}_residual.nii.gz")
residual.GetDisplayNode().SetAndObserveColorNodeID("vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
slicer.util.setSliceViewerLayers(background=ct, foreground=residual, foregroundOpacity=0.45)
try:  # nodule centres as a segmentation (outlined in every view)
    nodules = slicer.util.loadLabelVolume(f"{RUN}/overlays/{SERIES}_nodules.nii.gz")
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "nodule centres")
    slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(nodules, seg)
    slicer.mrmlScene.RemoveNode(nodules)
except Exception as exc:  # noqa: BLE001 - no nodules in this series
    print(f"no nodule markers loaded: {exc}")
ct.GetDisplayNode().SetAutoWindowLevel(False)
ct.GetDisplayNode().SetWindowLevel(1500, -600)  # lung window
slicer.util.resetSliceViews()
