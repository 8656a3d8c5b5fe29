# A CPU-sized Mask R-CNN trained from scratch on the Fashion-MNIST scenes (benchmarks/bench_detection.py): the
# seed topology (asvit_seed), a narrow FPN and heads (128 channels), fewer proposals and RoI samples than on COCO.
_base_ = './_base_/mask-rcnn_asvit_fpn_fmnist.py'

width = 128
model = dict(
    backbone=dict(arch='asvit_seed', drop_path_rate=0.0, init_cfg=None),
    # neck in_channels: the channels of asvit_seed's stages (tests/test_detection.py checks them against the registry).
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width, roi_layer=dict(sampling_ratio=2)),
        bbox_head=dict(in_channels=width, fc_out_channels=512),
        mask_roi_extractor=dict(out_channels=width, roi_layer=dict(sampling_ratio=2)),
        mask_head=dict(in_channels=width, num_convs=2, conv_out_channels=64)),
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=500), rcnn=dict(sampler=dict(num=64))))
# From scratch: a higher lr, no layer decay, clipped gradients.
optim_wrapper = dict(optimizer=dict(lr=0.002), paramwise_cfg=dict(layer_decay_rate=1.0), clip_grad=dict(max_norm=5.0))
