"""When a doctor can be seen: the pure availability core, weekly schedules and leave, the slot
cache, the directory.
"""
