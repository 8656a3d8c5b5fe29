# Mask R-CNN FPN with an As-ViT backbone on the Fashion-MNIST scenes: iteration-based, from scratch,
# validated with CocoMetric (bbox and segm) at the end.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py', './fmnist_coco_instance.py', 'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py', './asvit.py'
]

max_iters = 1000
model = dict(
    backbone={{_base_.asvit_backbone}},
    roi_head=dict(bbox_head=dict(num_classes=10), mask_head=dict(num_classes=10)))

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=max_iters, eta_min_ratio=0.01),
]
optim_wrapper = {{_base_.asvit_optim_wrapper}}

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=200, max_keep_ckpts=2))
log_processor = dict(by_epoch=False)
