"""Network stage: FCU-Net, U-Net baselines and property models as Lightning modules."""
