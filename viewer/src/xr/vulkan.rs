//! The one module of the workspace that uses `unsafe`: loading the OpenXR and Vulkan loaders,
//! and Vulkan interop between the OpenXR runtime and wgpu, which has no safe form. The runtime creates the Vulkan instance and device
//! (XR_KHR_vulkan_enable2) with the extensions and features wgpu asks for; wgpu wraps the raw
//! handles; and each swapchain image the runtime owns becomes a wgpu texture that never destroys
//! it. Every `unsafe` block states why it is sound.
#![allow(unsafe_code)]

use std::ffi::c_char;

use ash::vk::{self, Handle};
use wgpu::hal;
use wgpu::hal::api::Vulkan;

use super::XrError;

/// wgpu objects on the runtime's Vulkan device, and what the session needs to know of them.
pub struct XrGpu {
    /// The wgpu instance wrapping the runtime's VkInstance.
    pub instance: wgpu::Instance,
    /// The adapter of the runtime's physical device.
    pub adapter: wgpu::Adapter,
    /// The device the runtime created for us.
    pub device: wgpu::Device,
    /// Its queue (family `queue_family`, index 0): OpenXR submits on it in `xrEndFrame`.
    pub queue: wgpu::Queue,
    /// For `xrCreateSession`.
    pub session_info: openxr::vulkan::SessionCreateInfo,
}

impl std::fmt::Debug for XrGpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XrGpu").field("adapter", &self.adapter.get_info().name).finish_non_exhaustive()
    }
}

fn call(what: &str, e: impl std::fmt::Display) -> XrError {
    XrError::Call(format!("{what}: {e}"))
}

/// Loads the system's OpenXR loader. Debian's runtime package installs the versioned name only
/// (the plain one comes with -dev).
pub fn openxr_entry() -> Result<openxr::Entry, XrError> {
    let mut failed = Vec::new();
    for name in ["libopenxr_loader.so.1", "libopenxr_loader.so"] {
        // SAFETY: loading the system OpenXR loader runs its initialisers; it is the library the
        // OpenXR specification defines for exactly this use.
        match unsafe { openxr::Entry::load_from(std::path::Path::new(name)) } {
            Ok(e) => return Ok(e),
            // Each name's own reason: a loader that is there but misses a library it needs
            // says so under the first name only.
            Err(e) => failed.push(e.to_string()),
        }
    }
    Err(XrError::LoaderMissing(failed.join("; ")))
}

/// Loads the system's Vulkan loader (libvulkan.so.1).
fn vulkan_entry() -> Result<ash::Entry, XrError> {
    // SAFETY: loading the system Vulkan loader runs its initialisers; it is the library the
    // Vulkan specification defines for exactly this use, and the entry outlives every object
    // made from it (wgpu-hal keeps a clone).
    unsafe { ash::Entry::load() }.map_err(|e| call("load the Vulkan loader (apt-get install libvulkan1)", e))
}

/// Creates the Vulkan instance and device through the runtime and wraps them in wgpu.
pub fn create(xr: &openxr::Instance, system: openxr::SystemId) -> Result<XrGpu, XrError> {
    let reqs = xr.graphics_requirements::<openxr::Vulkan>(system).map_err(|e| call("graphics requirements", e))?;
    let entry = vulkan_entry()?;
    // SAFETY: a plain query of the loader.
    let loader_version = unsafe { entry.try_enumerate_instance_version() }
        .map_err(|e| call("vkEnumerateInstanceVersion", e))?
        .unwrap_or(vk::API_VERSION_1_0);
    let api_version = loader_version.min(vk::API_VERSION_1_3);
    let (major, minor) = (vk::api_version_major(api_version), vk::api_version_minor(api_version));
    if openxr::Version::new(major as u16, minor as u16, 0) < reqs.min_api_version_supported {
        return Err(XrError::Call(format!(
            "the runtime needs Vulkan {} and this machine offers {major}.{minor}",
            reqs.min_api_version_supported
        )));
    }
    let flags = wgpu::InstanceFlags::empty();
    let extensions = hal::vulkan::Instance::desired_extensions(&entry, api_version, flags)
        .map_err(|e| call("Vulkan instance extensions", e))?;
    let extension_names: Vec<*const c_char> = extensions.iter().map(|e| e.as_ptr()).collect();
    let app =
        vk::ApplicationInfo::default().application_name(c"theta viewer").engine_name(c"theta").api_version(api_version);
    let instance_info =
        vk::InstanceCreateInfo::default().application_info(&app).enabled_extension_names(&extension_names);
    let get_proc = entry.static_fn().get_instance_proc_addr;
    // The same C function in the two crates' spellings (ash's and openxr-sys's).
    type XrGetProc = openxr::sys::platform::VkGetInstanceProcAddr;
    // SAFETY: `instance_info` and everything it points to live until the call returns;
    // `get_proc` is the loader's own vkGetInstanceProcAddr, which the runtime calls to create
    // the instance; the function pointer types are the same C signature.
    let raw_instance = unsafe {
        xr.create_vulkan_instance(
            system,
            std::mem::transmute::<vk::PFN_vkGetInstanceProcAddr, XrGetProc>(get_proc),
            &instance_info as *const _ as *const _,
        )
    }
    .map_err(|e| call("xrCreateVulkanInstanceKHR", e))?
    .map_err(|e| call("vkCreateInstance (through the runtime)", vk::Result::from_raw(e)))?;
    let vk_instance = vk::Instance::from_raw(raw_instance as u64);
    // SAFETY: `vk_instance` was just created from this entry's loader.
    let ash_instance = unsafe { ash::Instance::load(entry.static_fn(), vk_instance) };
    // SAFETY: the instance was created from `entry` with `api_version`, exactly `extensions`
    // (a superset of `desired_extensions`, being equal to it) and `flags`; with no drop
    // callback wgpu-hal owns it and destroys it last, after every object made from it.
    let hal_instance = unsafe {
        hal::vulkan::Instance::from_raw(
            entry.clone(),
            ash_instance.clone(),
            api_version,
            0,
            None,
            extensions,
            flags,
            wgpu::MemoryBudgetThresholds::default(),
            false,
            None,
        )
    }
    .map_err(|e| call("wrap the Vulkan instance", e))?;
    // SAFETY: `raw_instance` is the live instance the runtime created for this system.
    let raw_physical = unsafe { xr.vulkan_graphics_device(system, raw_instance) }
        .map_err(|e| call("xrGetVulkanGraphicsDevice2KHR", e))?;
    let physical = vk::PhysicalDevice::from_raw(raw_physical as u64);
    let exposed = hal_instance
        .expose_adapter(physical)
        .ok_or_else(|| XrError::Call("the runtime's Vulkan device cannot run wgpu".into()))?;

    // Multiview where the device has it: both eyes per draw into the swapchain's two layers.
    let features = exposed.features & wgpu::Features::MULTIVIEW;
    let limits = wgpu::Limits {
        max_multiview_view_count: if features.is_empty() {
            0
        } else {
            exposed.capabilities.limits.max_multiview_view_count
        },
        ..wgpu::Limits::downlevel_defaults().using_resolution(exposed.capabilities.limits.clone())
    };
    let device_extensions = exposed.adapter.required_device_extensions(features);
    let mut device_features = exposed.adapter.physical_device_features(&device_extensions, features);
    // SAFETY: a plain query of a live physical device.
    let families = unsafe { ash_instance.get_physical_device_queue_family_properties(physical) };
    let family = families
        .iter()
        .position(|f| f.queue_flags.contains(vk::QueueFlags::GRAPHICS))
        .ok_or_else(|| XrError::Call("the runtime's Vulkan device has no graphics queue".into()))?
        as u32;
    let priorities = [1.0f32];
    let queues = [vk::DeviceQueueCreateInfo::default().queue_family_index(family).queue_priorities(&priorities)];
    let device_extension_names: Vec<*const c_char> = device_extensions.iter().map(|e| e.as_ptr()).collect();
    let device_info = device_features.add_to_device_create(
        vk::DeviceCreateInfo::default().queue_create_infos(&queues).enabled_extension_names(&device_extension_names),
    );
    // SAFETY: `device_info` and its chain live until the call returns; the physical device is
    // the one the runtime named; `get_proc` as above.
    let raw_device = unsafe {
        xr.create_vulkan_device(
            system,
            std::mem::transmute::<vk::PFN_vkGetInstanceProcAddr, XrGetProc>(get_proc),
            raw_physical,
            &device_info as *const _ as *const _,
        )
    }
    .map_err(|e| call("xrCreateVulkanDeviceKHR", e))?
    .map_err(|e| call("vkCreateDevice (through the runtime)", vk::Result::from_raw(e)))?;
    // SAFETY: `raw_device` was just created on `physical` of `ash_instance`.
    let ash_device = unsafe { ash::Device::load(ash_instance.fp_v1_0(), vk::Device::from_raw(raw_device as u64)) };
    // SAFETY: the device was created from this adapter with queue family `family`,
    // `device_extensions` (what `required_device_extensions` gave) and the features of
    // `physical_device_features`; with no drop callback wgpu-hal owns and destroys it.
    let open = unsafe {
        exposed.adapter.device_from_raw(
            ash_device,
            None,
            &device_extensions,
            features,
            &limits,
            &wgpu::MemoryHints::MemoryUsage,
            family,
            0,
        )
    }
    .map_err(|e| call("wrap the Vulkan device", e))?;
    // SAFETY: the hal instance is a valid Vulkan instance (above).
    let instance = unsafe { wgpu::Instance::from_hal::<Vulkan>(hal_instance) };
    // SAFETY: `exposed` came from this instance.
    let adapter = unsafe { instance.create_adapter_from_hal(exposed) };
    let desc = wgpu::DeviceDescriptor {
        label: Some("theta xr"),
        required_features: features,
        required_limits: limits,
        ..Default::default()
    };
    // SAFETY: `open` came from this adapter with these features and limits.
    let (device, queue) = unsafe { adapter.create_device_from_hal(open, &desc) }.map_err(|e| call("wgpu device", e))?;
    let session_info = openxr::vulkan::SessionCreateInfo {
        instance: raw_instance,
        physical_device: raw_physical,
        device: raw_device,
        queue_family_index: family,
        queue_index: 0,
    };
    Ok(XrGpu { instance, adapter, device, queue, session_info })
}

/// Creates the OpenXR session on the runtime's device. The session handles are kept alive by
/// the returned objects; `gpu` must outlive them (the caller keeps both in one struct, session
/// fields first).
pub fn create_session(
    xr: &openxr::Instance,
    system: openxr::SystemId,
    gpu: &XrGpu,
) -> Result<(openxr::Session<openxr::Vulkan>, openxr::FrameWaiter, openxr::FrameStream<openxr::Vulkan>), XrError> {
    // SAFETY: `session_info` names the live instance, physical device and device of `gpu`,
    // created through this runtime for this system, and the queue wgpu submits on.
    unsafe { xr.create_session::<openxr::Vulkan>(system, &gpu.session_info) }.map_err(|e| call("xrCreateSession", e))
}

/// The Vulkan format of a wgpu colour format, for swapchain creation.
pub fn vk_format(format: wgpu::TextureFormat) -> Option<u32> {
    match format {
        wgpu::TextureFormat::Rgba8UnormSrgb => Some(vk::Format::R8G8B8A8_SRGB.as_raw() as u32),
        wgpu::TextureFormat::Bgra8UnormSrgb => Some(vk::Format::B8G8R8A8_SRGB.as_raw() as u32),
        wgpu::TextureFormat::Rgba8Unorm => Some(vk::Format::R8G8B8A8_UNORM.as_raw() as u32),
        wgpu::TextureFormat::Bgra8Unorm => Some(vk::Format::B8G8R8A8_UNORM.as_raw() as u32),
        _ => None,
    }
}

/// Wraps one swapchain image (a 2D array of `layers` layers) as a wgpu texture that renders and
/// copies, without ever destroying the image: the runtime owns it.
pub fn swapchain_texture(
    device: &wgpu::Device,
    image: u64,
    format: wgpu::TextureFormat,
    width: u32,
    height: u32,
    layers: u32,
) -> wgpu::Texture {
    let size = wgpu::Extent3d { width, height, depth_or_array_layers: layers };
    let hal_desc = hal::TextureDescriptor {
        label: Some("xr swapchain image"),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUses::COLOR_TARGET | wgpu::TextureUses::COPY_SRC,
        memory_flags: hal::MemoryFlags::empty(),
        view_formats: Vec::new(),
    };
    // SAFETY: `as_hal` gives the Vulkan device under this wgpu device (it is one: `create`).
    let hal_device = unsafe { device.as_hal::<Vulkan>() }.expect("the XR device is a Vulkan device");
    // SAFETY: `image` is a live swapchain image of this device, created by the runtime with
    // this format, size, layer count and COLOR_ATTACHMENT | TRANSFER_SRC usage; the no-op drop
    // callback leaves it to the runtime, which keeps it until the swapchain is destroyed, after
    // the texture (the caller drops textures first); its memory is the runtime's (External).
    let texture = unsafe {
        hal_device.texture_from_raw(
            vk::Image::from_raw(image),
            &hal_desc,
            Some(Box::new(|| {})),
            hal::vulkan::TextureMemory::External,
        )
    };
    drop(hal_device);
    let desc = wgpu::TextureDescriptor {
        label: Some("xr swapchain image"),
        size,
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[],
    };
    // SAFETY: `texture` wraps a valid image described by `desc`; after `xrWaitSwapchainImage`
    // the image is in COLOR_ATTACHMENT_OPTIMAL, which wgpu knows as COLOR_TARGET.
    unsafe { device.create_texture_from_hal::<Vulkan>(texture, &desc, wgpu::TextureUses::COLOR_TARGET) }
}
